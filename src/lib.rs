//! Switchboard: a message broker that speaks AMQP 0-9-1 (MQTT and STOMP to follow) and routes
//! every protocol through one core of exchanges, bindings and queues.

pub mod adapter;
pub mod admin;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod core;
pub mod ctl;
pub mod net;
pub mod store;
pub mod sys;

pub use config::Config;
pub use net::{start, RunningBroker};
