//! Protocol adapters: each translates its wire protocol into calls on the core.

pub mod amqp;
pub mod header_text;
pub mod mqtt;
pub mod outbox;
pub mod settle;
pub mod stomp;
