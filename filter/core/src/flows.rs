//! What the shell remembers of a request between its request-headers callback and its log
//! callback: the authority as routed (so the log callback need not read `request.host`
//! again: every property read is a hostcall plus a call back into the VM to allocate the
//! value) and whether it was paused.
//!
//! Bounded: at [`MAX_FLOWS`] a new request is not remembered, and an entry older than
//! [`MAX_FLOW_AGE_MS`] is dropped on the next sweep. Forgetting is harmless: the log
//! callback then reads the authority from Envoy.

use hashbrown::HashMap;

/// Requests one worker remembers at most (in flight at once).
pub const MAX_FLOWS: usize = 16_384;
/// Entries older than this are dropped (a request whose log callback never came).
pub const MAX_FLOW_AGE_MS: u64 = 600_000;
/// Sweeps run at most this often.
pub const SWEEP_EVERY_MS: u64 = 60_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    /// `:authority` as routed (after a rewrite); `None`: read it in the log callback.
    pub authority: Option<Vec<u8>>,
    /// Paused for the namespace table: the router must forget it when it ends.
    pub paused: bool,
    started_ms: u64,
}

#[derive(Debug, Default)]
pub struct Flows {
    map: HashMap<u32, Flow>,
    last_sweep_ms: u64,
    /// Requests not remembered because the map was full.
    pub full: u64,
    /// Entries dropped by age.
    pub expired: u64,
}

impl Flows {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry of `context_id`, created if there is room.
    pub fn entry(&mut self, context_id: u32, now_ms: u64) -> Option<&mut Flow> {
        if self.map.len() >= MAX_FLOWS && !self.map.contains_key(&context_id) {
            self.full += 1;
            return None;
        }
        Some(self.map.entry(context_id).or_insert_with(|| Flow {
            started_ms: now_ms,
            ..Flow::default()
        }))
    }

    pub fn get(&self, context_id: u32) -> Option<&Flow> {
        self.map.get(&context_id)
    }

    /// Removes and returns the entry of a request that ended.
    pub fn take(&mut self, context_id: u32) -> Option<Flow> {
        self.map.remove(&context_id)
    }

    /// Drops entries older than [`MAX_FLOW_AGE_MS`], at most once per [`SWEEP_EVERY_MS`];
    /// returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        if self.map.is_empty() || now_ms.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS {
            return 0;
        }
        self.last_sweep_ms = now_ms;
        let before = self.map.len();
        self.map
            .retain(|_, flow| now_ms.saturating_sub(flow.started_ms) < MAX_FLOW_AGE_MS);
        let dropped = before - self.map.len();
        self.expired += dropped as u64;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_from_headers_to_log() {
        let mut flows = Flows::default();
        let flow = flows.entry(7, 0).unwrap();
        flow.authority = Some(b"a.ns.svc.cluster.local".to_vec());
        // A second callback of the same request finds the same entry.
        assert_eq!(
            flows.entry(7, 5).unwrap().authority.as_deref(),
            Some(&b"a.ns.svc.cluster.local"[..])
        );
        assert!(flows.get(7).is_some());
        let taken = flows.take(7).unwrap();
        assert!(!taken.paused);
        assert!(flows.take(7).is_none());
        assert!(flows.is_empty());
    }

    #[test]
    fn a_full_map_remembers_no_new_request_and_counts_it() {
        let mut flows = Flows::default();
        for id in 0..MAX_FLOWS as u32 {
            assert!(flows.entry(id, 0).is_some());
        }
        assert!(flows.entry(u32::MAX, 0).is_none());
        assert_eq!(flows.full, 1);
        // Known requests are still found.
        assert!(flows.entry(3, 0).is_some());
        flows.take(3);
        assert!(flows.entry(u32::MAX, 0).is_some());
        assert_eq!(flows.len(), MAX_FLOWS);
    }

    #[test]
    fn sweeps_drop_only_old_entries_and_run_at_most_once_a_minute() {
        // (entries started at, sweep at, expected dropped)
        let cases: &[(&[u64], u64, usize)] = &[
            (&[], 10 * MAX_FLOW_AGE_MS, 0),
            (&[0, 1], SWEEP_EVERY_MS - 1, 0),
            (&[0, MAX_FLOW_AGE_MS], MAX_FLOW_AGE_MS, 1),
            (&[0, 1, 2], 2 * MAX_FLOW_AGE_MS, 3),
        ];
        for (started, at, want) in cases {
            let mut flows = Flows::default();
            for (id, s) in started.iter().enumerate() {
                flows.entry(id as u32, *s);
            }
            assert_eq!(flows.sweep(*at), *want, "{started:?} swept at {at}");
            assert_eq!(flows.expired, *want as u64);
            assert_eq!(flows.len(), started.len() - want);
        }
        let mut flows = Flows::default();
        flows.entry(1, 0);
        flows.entry(2, MAX_FLOW_AGE_MS);
        assert_eq!(flows.sweep(MAX_FLOW_AGE_MS), 1);
        // Too soon after that sweep: nothing happens.
        assert_eq!(flows.sweep(MAX_FLOW_AGE_MS + SWEEP_EVERY_MS - 1), 0);
        assert_eq!(flows.sweep(2 * MAX_FLOW_AGE_MS), 1);
        assert!(flows.is_empty());
    }
}
