//! Status reports: the body and its client-side check against the documented limits.

use super::*;

impl PlatformClient {
    /// The body statusd sends for a batch of events (exposed for tests and the sandbox docs).
    pub fn status_body(&self, events: &[ReportEvent]) -> Value {
        self.status_body_at(events, &ReportTimes::default())
    }

    /// The body with the report's activation and deactivation times.
    pub fn status_body_at(&self, events: &[ReportEvent], times: &ReportTimes) -> Value {
        let i = &self.inner.integration;
        let report = StatusReport {
            application_code: i.application_code.as_deref(),
            application_id: i.application_id.as_deref(),
            module: NameVersion {
                name: i.module_name.clone(),
                version: (!i.module_version.is_empty()).then(|| i.module_version.clone()),
            },
            vendor_system: i.vendor_system_name.as_ref().map(|n| NameVersion {
                name: n.clone(),
                version: i.vendor_system_version.clone(),
            }),
            events,
            activated_at: times.activated_at.as_deref(),
            deactivated_at: times.deactivated_at.as_deref(),
        };
        serde_json::to_value(report).expect("report serializes")
    }

    /// Report a batch of events for a tenant. Validated before sending: a report the platform
    /// would refuse is a permanent error without a request.
    pub async fn report_status(
        &self,
        tenant: Uuid,
        events: &[ReportEvent],
    ) -> Result<(), PlatformError> {
        self.report_status_at(tenant, events, &ReportTimes::default())
            .await
    }

    /// Report a batch of events with the report's activation and deactivation times.
    pub async fn report_status_at(
        &self,
        tenant: Uuid,
        events: &[ReportEvent],
        times: &ReportTimes,
    ) -> Result<(), PlatformError> {
        const CALL: &str = "POST /api/integration_management/v2/status";
        validate_report(&self.inner.integration, events)
            .map_err(|m| PlatformError::local(CALL, ErrorClass::Permanent, m))?;
        let body =
            serde_json::to_vec(&self.status_body_at(events, times)).expect("report serializes");
        let url = self.url("/api/integration_management/v2/status");
        let tenant = tenant.to_string();
        self.send(CALL, |h| {
            h.post(&url)
                .query(&[("tenantID", tenant.as_str())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map(|_| ())
    }
}

/// Client-side checks of a report against the documented limits (characters, not bytes).
pub fn validate_report(i: &IntegrationSettings, events: &[ReportEvent]) -> Result<(), String> {
    let len = |s: &str| s.chars().count();
    match (&i.application_code, &i.application_id) {
        (Some(_), Some(_)) => return Err("both application_code and application_id are set".into()),
        (None, None) => return Err("neither application_code nor application_id is set".into()),
        (Some(c), None) if len(c) == 0 || len(c) > limits::APPLICATION_CODE => {
            return Err(format!(
                "application_code must be 1 to {} characters",
                limits::APPLICATION_CODE
            ))
        }
        _ => {}
    }
    if len(&i.module_name) == 0 || len(&i.module_name) > limits::NAME {
        return Err(format!(
            "module.name must be 1 to {} characters",
            limits::NAME
        ));
    }
    for (n, e) in events.iter().enumerate() {
        if len(&e.category) == 0 || len(&e.category) > limits::CATEGORY {
            return Err(format!(
                "events[{n}].category must be 1 to {} characters",
                limits::CATEGORY
            ));
        }
        if len(&e.action) == 0 || len(&e.action) > limits::ACTION {
            return Err(format!(
                "events[{n}].action must be 1 to {} characters",
                limits::ACTION
            ));
        }
        if e.activation_event && e.deactivation_event {
            return Err(format!(
                "events[{n}] sets both activation_event and deactivation_event"
            ));
        }
    }
    Ok(())
}
