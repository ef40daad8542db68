//! The lifecycle event log the API serves: a bounded list with sequence numbers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use api_types::{Event, EventKind, EventList};

/// Events kept; older ones are dropped (a reader that falls behind sees a gap in `seq`).
const CAPACITY: usize = 1024;

/// The log.
pub struct EventLog {
    start: Instant,
    events: Mutex<(VecDeque<Event>, u64)>,
}

impl EventLog {
    /// An empty log whose times count from now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Records an event.
    pub fn push(&self, kind: EventKind, detail: Option<String>) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        let event = Event {
            seq: g.1,
            time_ms: crate::manager::millis_since(self.start),
            kind,
            detail,
        };
        if g.0.len() == CAPACITY {
            g.0.pop_front();
        }
        g.0.push_back(event);
    }

    /// Events with a sequence number above `since`.
    pub fn since(&self, since: u64) -> EventList {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        EventList {
            events: g.0.iter().filter(|e| e.seq > since).cloned().collect(),
            next: g.1,
        }
    }
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}
