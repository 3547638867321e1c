//! EventBus adapters: the embedded durable in-process log.
