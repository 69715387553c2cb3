//! Protocol adapters: each translates its wire protocol into calls on the core.

pub mod amqp;
