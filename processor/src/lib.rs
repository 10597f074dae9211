//! The decision engine: credit ledger, policies, event-sourced state and decision emission.
