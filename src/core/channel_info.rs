//! What the management API shows of an AMQP channel (`/api/channels`, `ctl list_channels`):
//! the channel publishes its settings and counts into [`ChannelGauges`] when they change (a
//! method other than a publish, a confirm batch), never per message; the count of unacked
//! deliveries is read from the channel's delivery state when listed.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A channel's figures as listed, with RabbitMQ's field names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Per-consumer prefetch for new consumers (`basic.qos` with `global=false`).
    pub prefetch_count: u32,
    /// Channel-wide prefetch (`basic.qos` with `global=true`).
    pub global_prefetch_count: u32,
    pub consumer_count: u32,
    pub messages_unacknowledged: u64,
    /// Confirm-mode publishes not yet acked or nacked.
    pub messages_unconfirmed: u64,
    /// Publishes held by an open transaction.
    pub messages_uncommitted: u64,
    /// Acks (and nacks, rejects) held by an open transaction.
    pub acks_uncommitted: u64,
    pub transactional: bool,
    pub confirm: bool,
}

/// The channel-owned part of [`ChannelInfo`], written by the channel's connection task and read
/// by listings.
#[derive(Debug, Default)]
pub struct ChannelGauges {
    prefetch_count: AtomicU32,
    global_prefetch_count: AtomicU32,
    consumer_count: AtomicU32,
    messages_unconfirmed: AtomicU64,
    messages_uncommitted: AtomicU64,
    acks_uncommitted: AtomicU64,
    transactional: AtomicBool,
    confirm: AtomicBool,
}

impl ChannelGauges {
    /// Stores the channel's current figures (`messages_unacknowledged` is not kept here).
    pub fn store(&self, info: &ChannelInfo) {
        let r = Ordering::Relaxed;
        self.prefetch_count.store(info.prefetch_count, r);
        self.global_prefetch_count
            .store(info.global_prefetch_count, r);
        self.consumer_count.store(info.consumer_count, r);
        self.messages_unconfirmed
            .store(info.messages_unconfirmed, r);
        self.messages_uncommitted
            .store(info.messages_uncommitted, r);
        self.acks_uncommitted.store(info.acks_uncommitted, r);
        self.transactional.store(info.transactional, r);
        self.confirm.store(info.confirm, r);
    }

    /// The figures last stored, with `unacked` deliveries.
    pub fn load(&self, unacked: u64) -> ChannelInfo {
        let r = Ordering::Relaxed;
        ChannelInfo {
            prefetch_count: self.prefetch_count.load(r),
            global_prefetch_count: self.global_prefetch_count.load(r),
            consumer_count: self.consumer_count.load(r),
            messages_unacknowledged: unacked,
            messages_unconfirmed: self.messages_unconfirmed.load(r),
            messages_uncommitted: self.messages_uncommitted.load(r),
            acks_uncommitted: self.acks_uncommitted.load(r),
            transactional: self.transactional.load(r),
            confirm: self.confirm.load(r),
        }
    }
}

/// A listed channel: its figures on demand. Implemented by the AMQP adapter's per-channel
/// delivery state, which holds the gauges and the unacked deliveries.
pub trait ChannelView: Send + Sync + std::fmt::Debug {
    fn info(&self) -> ChannelInfo;
}
