//! The decisions a router holds: the latest version of each schedule, applied the moment
//! it is consumed, and what to route on once it has expired.

use std::sync::Arc;

use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderName, HeaderValue, Uri};
use carbonflow_schemas::records::{DecisionFlavour, ExpiryBehaviour, ScheduleDecision};
use carbonflow_schemas::upstream::AllowList;
use carbonflow_schemas::vocabulary::{AttemptResult, FallbackCondition};
use dashmap::DashMap;

use crate::metrics::{ScheduleGauges, ServedMetrics};
use crate::select::Picker;

/// One schedule's routing state, built once per decision.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) decision: ScheduleDecision,
    /// Over the decision's exact weights, in flavour order.
    picker: Picker,
    /// Used after expiry: all traffic to the highest-precision enabled flavour, or the
    /// same weights, as the decision's expiry behaviour says.
    expired_picker: Picker,
    /// The decision's fallback rules, parsed once, in order.
    fallbacks: Vec<Fallback>,
    /// Per flavour, why its upstream is outside the router's allow-list (checked once
    /// per decision, not per request).
    refused_upstreams: Vec<Option<String>>,
    /// Per flavour, what forwarding to it needs, prepared once per decision.
    pub(crate) upstreams: Vec<Upstream>,
    /// The `x-carbonflow-decision-version` response header's value.
    pub(crate) version_header: HeaderValue,
    /// Wall-clock time it was applied, epoch ms.
    pub(crate) applied_at_ms: i64,
    /// The schedule's decision series, carried over from the previous decision when its
    /// flavours are the same.
    pub(crate) gauges: Arc<ScheduleGauges>,
}

/// One flavour's upstream as the proxy uses it on every request.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// Scheme, authority and path prefix of the upstream URL; `Err` names why the URL
    /// is unusable (the processor validates URLs, another writer might not).
    pub(crate) target: Result<Target, String>,
    /// Service-mesh mode: the header naming the flavour and its value.
    pub(crate) mesh_header: Option<(HeaderName, HeaderValue)>,
    /// The `x-carbonflow-flavour` response header's value.
    pub(crate) served_by: Option<HeaderValue>,
    /// Request metrics of this flavour.
    pub(crate) metrics: ServedMetrics,
}

/// Where requests for one flavour go: `scheme://authority` + `prefix` + the request path.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `scheme://authority`: connections are kept and reused per origin.
    pub(crate) origin: Arc<str>,
    /// The origin as a URI, which is what connecting needs.
    pub(crate) origin_uri: Uri,
    /// The upstream URL's path without its trailing `/` (`""` for the root).
    prefix: String,
    /// The `Host` header for the upstream: its host, and its port unless the scheme's
    /// default.
    pub(crate) host: HeaderValue,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let bad = |e: &dyn std::fmt::Display| format!("bad upstream URL {url:?}: {e}");
        let uri: Uri = url.parse().map_err(|e| bad(&e))?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err(bad(&"it needs a scheme and a host"));
        };
        let prefix = parts
            .path_and_query
            .as_ref()
            .map_or("", |p| p.as_str())
            .trim_end_matches('/')
            .to_string();
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_string(),
        };
        let host = HeaderValue::from_str(&host).map_err(|e| bad(&e))?;
        // Without any user:password@ of the URL: the origin names the upstream in errors
        // and logs.
        let origin = match authority.port() {
            Some(port) => format!("{scheme}://{}:{port}", authority.host()),
            None => format!("{scheme}://{}", authority.host()),
        };
        let origin_uri = origin.parse().map_err(|e| bad(&e))?;
        Ok(Self {
            origin: origin.into(),
            origin_uri,
            prefix,
            host,
        })
    }

    /// The upstream request's URI (origin-form: its path and query) for a request to
    /// `path_and_query`.
    pub(crate) fn request_uri(&self, path_and_query: &PathAndQuery) -> Result<Uri, String> {
        if self.prefix.is_empty() && path_and_query.as_str().starts_with('/') {
            // The request's own path, already parsed: shared, not copied or parsed again.
            return Ok(Uri::from(path_and_query.clone()));
        }
        let mut path = String::with_capacity(self.prefix.len() + path_and_query.as_str().len());
        path.push_str(&self.prefix);
        path.push_str(path_and_query.as_str());
        Uri::try_from(path).map_err(|e| {
            format!(
                "bad upstream path {}{path_and_query} for {}: {e}",
                self.prefix, self.origin
            )
        })
    }
}

impl Upstream {
    fn of(f: &DecisionFlavour) -> Self {
        let mesh_header = f.upstream_header.as_ref().and_then(|h| {
            Some((
                HeaderName::from_bytes(h.as_bytes()).ok()?,
                HeaderValue::from(f.precision_percent),
            ))
        });
        Self {
            target: Target::parse(&f.upstream_url),
            mesh_header,
            served_by: HeaderValue::from_str(&f.name).ok(),
            metrics: ServedMetrics::default(),
        }
    }
}

/// A fallback rule as the proxy uses it.
#[derive(Debug)]
struct Fallback {
    conditions: Vec<FallbackCondition>,
    /// Index of the enabled flavour it retries on; `None` when the rule names a flavour
    /// the decision has not enabled (the rule never applies).
    to: Option<usize>,
}

impl Route {
    fn new(
        decision: ScheduleDecision,
        applied_at_ms: i64,
        upstreams: &AllowList,
        previous: Option<&Route>,
    ) -> Self {
        let gauges = match previous {
            Some(p) if p.gauges.fit(&decision.flavours, decision.fallbacks.len()) => {
                p.gauges.clone()
            }
            _ => Arc::new(ScheduleGauges::of(
                &decision.schedule,
                &decision.flavours,
                decision.fallbacks.len(),
            )),
        };
        let refused_upstreams = decision
            .flavours
            .iter()
            .map(|f| {
                upstreams
                    .check_url(&f.upstream_url)
                    .err()
                    .map(|r| r.to_string())
            })
            .collect();
        let upstreams = decision.flavours.iter().map(Upstream::of).collect();
        let picker = Picker::new(decision.flavours.iter().map(|f| f.weight));
        let top = highest_precision(&decision.flavours);
        let expired_picker = match decision.on_expiry {
            ExpiryBehaviour::KeepLastWeights => {
                Picker::new(decision.flavours.iter().map(|f| f.weight))
            }
            ExpiryBehaviour::HighestPrecision => Picker::new(
                (0..decision.flavours.len()).map(|i| if Some(i) == top { 1.0 } else { 0.0 }),
            ),
        };
        // The processor validated every condition; one it could not parse (a decision
        // written by another client) is skipped rather than matched loosely.
        let fallbacks = decision
            .fallbacks
            .iter()
            .map(|r| Fallback {
                conditions: r
                    .when_status
                    .iter()
                    .filter_map(|c| c.parse().ok())
                    .collect(),
                to: decision
                    .flavours
                    .iter()
                    .position(|f| f.enabled && f.name == r.to),
            })
            .collect();
        Self {
            version_header: HeaderValue::from(decision.version),
            decision,
            picker,
            expired_picker,
            fallbacks,
            refused_upstreams,
            upstreams,
            applied_at_ms,
            gauges,
        }
    }

    /// Whether any fallback rule can resend a request (the request is then kept for it).
    pub(crate) fn has_fallbacks(&self) -> bool {
        self.fallbacks.iter().any(|f| f.to.is_some())
    }

    /// Why flavour `index`'s upstream may not be connected to, if it may not.
    pub(crate) fn upstream_refusal(&self, index: usize) -> Option<&str> {
        self.refused_upstreams.get(index)?.as_deref()
    }

    /// The first rule whose conditions match `result` (seed 003: first match wins), as
    /// `(rule index, flavour index to retry on)`; a matching rule whose flavour is not
    /// enabled ends the search without a retry.
    pub(crate) fn fallback_for(&self, result: AttemptResult) -> Option<(usize, usize)> {
        let (index, rule) = self
            .fallbacks
            .iter()
            .enumerate()
            .find(|(_, r)| r.conditions.iter().any(|c| c.matches(result)))?;
        Some((index, rule.to?))
    }

    /// Whether `valid_until` (plus `grace_ms`) has passed at `now_ms`.
    pub(crate) fn expired(&self, now_ms: i64, grace_ms: i64) -> bool {
        now_ms >= self.decision.valid_until_ms + grace_ms
    }

    /// The picker to use at `now_ms`.
    pub(crate) fn picker_at(&self, now_ms: i64, grace_ms: i64) -> &Picker {
        if self.expired(now_ms, grace_ms) {
            &self.expired_picker
        } else {
            &self.picker
        }
    }

    /// Index of the enabled flavour named `name`.
    pub(crate) fn enabled_flavour(&self, name: &str) -> Option<usize> {
        self.decision
            .flavours
            .iter()
            .position(|f| f.enabled && f.name == name)
    }

    /// Names of the enabled flavours (for error messages).
    pub(crate) fn enabled_names(&self) -> Vec<String> {
        self.decision
            .flavours
            .iter()
            .filter(|f| f.enabled)
            .map(|f| f.name.clone())
            .collect()
    }
}

fn highest_precision(flavours: &[DecisionFlavour]) -> Option<usize> {
    flavours
        .iter()
        .enumerate()
        .filter(|(_, f)| f.enabled)
        .max_by_key(|(_, f)| f.precision_percent)
        .map(|(i, _)| i)
}

/// What [`DecisionTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The decision is now in force; `previous` is the version it replaced, if any.
    Applied { previous: Option<i64> },
    /// Not newer, by [`ScheduleDecision::precedence`], than the `(epoch, version)` held (a
    /// duplicate after a processor restart, replayed history, or a superseded owner's
    /// late decision): ignored, so that decisions only ever move forward.
    Ignored { held: (i64, i64) },
}

/// The latest decision of every schedule: written by the follower, read by the proxy,
/// the admin endpoints and the expiry watcher.
#[derive(Debug, Default)]
pub struct DecisionTable {
    routes: DashMap<String, Arc<Route>, foldhash::fast::RandomState>,
    /// Precedence held when a schedule was deleted, so older decisions stay ignored.
    deleted: DashMap<String, (i64, i64)>,
    /// Where upstreams may be (the router's `--allow-upstream`).
    upstreams: AllowList,
}

impl DecisionTable {
    /// An empty table whose routes check upstreams against `upstreams`.
    pub fn new(upstreams: AllowList) -> Self {
        Self {
            upstreams,
            ..Self::default()
        }
    }

    /// Apply `d` if it supersedes the decision held, and export its version and weights.
    pub(crate) fn apply(&self, d: ScheduleDecision, now_ms: i64) -> Applied {
        let held = self
            .routes
            .get(&d.schedule)
            .map(|r| r.decision.precedence())
            .or_else(|| self.deleted.get(&d.schedule).map(|v| *v));
        if let Some(held) = held.filter(|h| d.precedence() <= *h) {
            return Applied::Ignored { held };
        }
        let held_route = self.get(&d.schedule);
        let previous = held_route.as_ref().map(|r| r.decision.version);
        self.deleted.remove(&d.schedule);
        let route = Arc::new(Route::new(
            d,
            now_ms,
            &self.upstreams,
            held_route.as_deref(),
        ));
        route.gauges.applied(&route.decision);
        self.routes.insert(route.decision.schedule.clone(), route);
        Applied::Applied { previous }
    }

    /// Forget a deleted schedule (a tombstone on the decisions topic).
    pub(crate) fn remove(&self, schedule: &str) {
        if let Some((_, r)) = self.routes.remove(schedule) {
            self.deleted
                .insert(schedule.to_string(), r.decision.precedence());
        }
    }

    /// The route of `schedule`.
    pub(crate) fn get(&self, schedule: &str) -> Option<Arc<Route>> {
        self.routes.get(schedule).map(|r| r.clone())
    }

    /// Every held route.
    pub(crate) fn all(&self) -> Vec<Arc<Route>> {
        self.routes.iter().map(|r| r.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbonflow_schemas::testing::samples;

    fn decision(version: i64) -> ScheduleDecision {
        let mut d = samples::schedule_decision();
        d.version = version;
        d
    }

    #[test]
    fn an_upstreams_host_header_names_its_port_only_when_not_the_schemes_default() {
        let host = |url: &str| Target::parse(url).expect("a valid URL").host;
        assert_eq!(host("http://flavour-a:8080/x"), "flavour-a:8080");
        assert_eq!(host("http://flavour-a:80/x"), "flavour-a");
        assert_eq!(host("https://flavour-a:443"), "flavour-a");
        assert_eq!(host("https://flavour-a:80"), "flavour-a:80");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
        assert_eq!(host("http://user:pw@flavour-a/"), "flavour-a");
        let with_credentials = Target::parse("http://user:pw@flavour-a:81/").expect("a valid URL");
        assert_eq!(&*with_credentials.origin, "http://flavour-a:81");
        let target = Target::parse("http://flavour-a:8080/light/").expect("a valid URL");
        assert_eq!(&*target.origin, "http://flavour-a:8080");
        assert_eq!(
            target
                .request_uri(&PathAndQuery::from_static("/v1/items?id=3"))
                .expect("a valid path"),
            "/light/v1/items?id=3"
        );
        let at_the_root = Target::parse("http://flavour-a:8080/").expect("a valid URL");
        assert_eq!(
            at_the_root
                .request_uri(&PathAndQuery::from_static("/v1/items?id=3"))
                .expect("a valid path"),
            "/v1/items?id=3"
        );
    }

    #[test]
    fn a_schedules_series_are_registered_once_for_decisions_of_the_same_flavours() {
        let t = DecisionTable::default();
        let gauges = |t: &DecisionTable| t.get(&decision(1).schedule).expect("held").gauges.clone();
        t.apply(decision(1), 0);
        let first = gauges(&t);
        t.apply(decision(2), 0);
        assert!(
            Arc::ptr_eq(&first, &gauges(&t)),
            "same flavours: carried over"
        );
        let mut renamed = decision(3);
        renamed.flavours[0].name = "another".into();
        t.apply(renamed, 0);
        assert!(
            !Arc::ptr_eq(&first, &gauges(&t)),
            "other flavours: registered anew"
        );
    }

    #[test]
    fn only_newer_versions_apply() {
        let t = DecisionTable::default();
        assert_eq!(t.apply(decision(3), 0), Applied::Applied { previous: None });
        assert_eq!(t.apply(decision(2), 0), Applied::Ignored { held: (0, 3) });
        assert_eq!(t.apply(decision(3), 0), Applied::Ignored { held: (0, 3) });
        assert_eq!(
            t.apply(decision(5), 0),
            Applied::Applied { previous: Some(3) }
        );
        t.remove(&decision(5).schedule);
        assert_eq!(t.apply(decision(4), 0), Applied::Ignored { held: (0, 5) });
        assert!(t.get(&decision(5).schedule).is_none());
    }

    #[test]
    fn a_newer_owner_epoch_supersedes_any_version_of_an_older_one() {
        let at = |epoch, version| ScheduleDecision {
            epoch,
            ..decision(version)
        };
        let t = DecisionTable::default();
        t.apply(at(10, 7), 0);
        // The new owner restored to version 5 (the old one's last two were fenced out).
        assert_eq!(
            t.apply(at(20, 6), 0),
            Applied::Applied { previous: Some(7) }
        );
        // The superseded owner's late decisions, even with higher versions, are ignored.
        assert_eq!(t.apply(at(10, 8), 0), Applied::Ignored { held: (20, 6) });
        assert_eq!(t.apply(at(20, 6), 0), Applied::Ignored { held: (20, 6) });
        assert_eq!(
            t.apply(at(20, 7), 0),
            Applied::Applied { previous: Some(6) }
        );
    }

    #[test]
    fn expiry_routes_to_the_highest_precision_enabled_flavour() {
        let mut d = decision(1);
        d.valid_until_ms = 1000;
        d.flavours[0].enabled = false; // the top flavour is disabled: the next one wins
        d.on_expiry = ExpiryBehaviour::HighestPrecision;
        let t = DecisionTable::default();
        t.apply(d.clone(), 0);
        let r = t.get(&d.schedule).expect("route");
        assert!(!r.expired(999, 0) && r.expired(1000, 0) && !r.expired(1000, 1));
        let second_best = d
            .flavours
            .iter()
            .enumerate()
            .filter(|(_, f)| f.enabled)
            .max_by_key(|(_, f)| f.precision_percent)
            .map(|(i, _)| i);
        assert_eq!(r.picker_at(2000, 0).pick_smooth(), second_best);
        assert_eq!(r.picker_at(500, 0).total(), r.picker.total());
    }
}
