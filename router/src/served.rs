//! Which schedules a router serves: the list it was started with, or every schedule on
//! the decisions topic (`--all-schedules`). A router serves nothing else, so a client
//! cannot steer its requests through another team's schedule.

use std::collections::BTreeSet;

use carbonflow_schemas::topics::partition_of;

/// The schedules a router serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// Every schedule (requests name theirs in `x-carbonflow-schedule`).
    All,
    /// Only these schedule ids.
    Only(BTreeSet<String>),
}

impl Served {
    /// Whether requests for `schedule` are served.
    pub(crate) fn contains(&self, schedule: &str) -> bool {
        match self {
            Served::All => true,
            Served::Only(ids) => ids.contains(schedule),
        }
    }

    /// The schedule of requests that name none: the one served, when there is one.
    pub(crate) fn single(&self) -> Option<&str> {
        match self {
            Served::Only(ids) if ids.len() == 1 => ids.first().map(String::as_str),
            _ => None,
        }
    }

    /// The schedule ids served, for error messages (empty for every schedule).
    pub(crate) fn names(&self) -> Vec<&str> {
        match self {
            Served::All => vec![],
            Served::Only(ids) => ids.iter().map(String::as_str).collect(),
        }
    }

    /// The partitions, among `partitions`, holding these schedules' decisions (every
    /// producer places them by murmur2 of the schedule id); `None` for every partition.
    pub(crate) fn partitions(&self, partitions: i32) -> Option<BTreeSet<i32>> {
        match self {
            Served::All => None,
            Served::Only(ids) => Some(
                ids.iter()
                    .filter_map(|id| partition_of(id.as_bytes(), partitions))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_serves_its_schedules_and_reads_their_partitions() {
        let served = Served::Only(["a/x".to_string(), "b/y".to_string()].into());
        assert!(served.contains("a/x") && !served.contains("c/z"));
        assert_eq!(served.single(), None);
        let parts = served.partitions(6).expect("a list");
        assert!(parts.len() <= 2 && parts.iter().all(|p| (0..6).contains(p)));
        assert_eq!(
            Served::Only(["a/x".to_string()].into()).single(),
            Some("a/x")
        );
        assert!(Served::All.contains("anything") && Served::All.partitions(6).is_none());
    }
}
