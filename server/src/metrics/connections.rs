//! Connection-level counters: what the listener refused or cut before or while
//! reading a request (`edge::conn`).

use std::borrow::Cow;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Metrics, ReasonLabel};

pub struct Connections {
    refused: Family<ReasonLabel, Counter>,
    client_errors: Family<ReasonLabel, Counter>,
}

impl Connections {
    pub fn register(registry: &mut Registry) -> Self {
        let c = Self {
            refused: Family::default(),
            client_errors: Family::default(),
        };
        registry.register(
            "connections_refused",
            "Connections closed at accept, by reason (per_ip: server.max_connections_per_ip)",
            c.refused.clone(),
        );
        registry.register(
            "client_errors",
            "Requests cut or refused before the application saw them whole, by reason (head timeout, body timeout, malformed, too large)",
            c.client_errors.clone(),
        );
        c
    }
}

impl Metrics {
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections
            .refused
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    pub fn client_error(&self, reason: &'static str) {
        self.connections
            .client_errors
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }
}
