//! The HTTP data plane: applies decisions, picks flavours, proxies, emits telemetry.
