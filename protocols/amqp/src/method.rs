//! Every method of AMQP 0-9-1 (connection, channel, exchange, queue, basic, tx) plus RabbitMQ's
//! extensions (exchange.bind/unbind, basic.nack, confirm.*, connection.blocked/unblocked,
//! connection.update-secret), generated from one declarative table at the bottom of this file.
//!
//! Wire types: `shortstr` → `String` (UTF-8 checked), `longstr` → `Bytes`, `bit` → `bool`,
//! `octet` → `u8`, `short` → `u16`, `long` → `u32`, `longlong` → `u64`, `table` → `FieldTable`.
//! Reserved/deprecated arguments (tickets, `reserved-1`…) are read and discarded on decode and
//! written as zero/empty on encode; they are not struct fields. Consecutive `bit` arguments are
//! packed into octets, least significant bit first.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::types::FieldTable;
use crate::wire::{Reader, Sink, Sizer, Writer};

/// The Rust type of an argument's wire type.
macro_rules! wire_ty {
    (octet) => {
        u8
    };
    (short) => {
        u16
    };
    (long) => {
        u32
    };
    (longlong) => {
        u64
    };
    (bit) => {
        bool
    };
    (shortstr) => {
        String
    };
    (longstr) => {
        Bytes
    };
    (table) => {
        FieldTable
    };
}

/// Generates one method struct with its argument decoder and encoder. A tt-muncher over the
/// argument list `name: type, _: reserved_type, …`, accumulating struct fields, decode
/// statements, constructor fields and encode statements. `$r`, `$w` and `$this` are passed
/// down from one expansion so the statements built in different steps agree (hygiene).
macro_rules! method_struct {
    (@munch [$name:ident $c:literal $m:literal $label:literal] ($r:ident, $w:ident, $this:ident)
        [$($sf:tt)*] [$($dec:tt)*] [$($ctor:tt)*] [$($enc:tt)*] ;) => {
        #[doc = concat!("`", $label, "` (class ", $c, ", method ", $m, ").")]
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $($sf)*
        }

        impl $name {
            pub const CLASS_ID: u16 = $c;
            pub const METHOD_ID: u16 = $m;
            pub const NAME: &'static str = $label;

            #[allow(unused_variables)]
            #[inline]
            pub(crate) fn decode_args($r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                $($dec)*
                Ok(Self { $($ctor)* })
            }

            #[allow(unused_variables)]
            #[inline]
            pub(crate) fn write_args<S: Sink>(&self, $w: &mut S) {
                let $this = self;
                $($enc)*
            }
        }

        impl From<$name> for Method {
            #[inline]
            fn from(m: $name) -> Method {
                Method::$name(m)
            }
        }
    };
    // A reserved argument: read and discard, write zero/empty.
    (@munch $hdr:tt ($r:ident, $w:ident, $this:ident)
        [$($sf:tt)*] [$($dec:tt)*] [$($ctor:tt)*] [$($enc:tt)*] ;
        _ : $t:ident $(, $($rest:tt)*)?) => {
        method_struct!(@munch $hdr ($r, $w, $this)
            [$($sf)*]
            [$($dec)* $r.$t()?;]
            [$($ctor)*]
            [$($enc)* $w.$t();]
            ; $($($rest)*)?);
    };
    // A real argument.
    (@munch $hdr:tt ($r:ident, $w:ident, $this:ident)
        [$($sf:tt)*] [$($dec:tt)*] [$($ctor:tt)*] [$($enc:tt)*] ;
        $f:ident : $t:ident $(, $($rest:tt)*)?) => {
        method_struct!(@munch $hdr ($r, $w, $this)
            [$($sf)* pub $f: wire_ty!($t),]
            [$($dec)* let $f = $r.$t()?;]
            [$($ctor)* $f,]
            [$($enc)* $w.$t(&$this.$f);]
            ; $($($rest)*)?);
    };
}

/// Generates the structs, the `Method` enum and its dispatching functions from the method table.
macro_rules! methods {
    ($($name:ident ($c:literal, $m:literal, $label:literal) { $($args:tt)* })*) => {
        $(method_struct!(@munch [$name $c $m $label] (r, w, this) [] [] [] [] ; $($args)*);)*

        /// Any AMQP 0-9-1 method (with RabbitMQ extensions). Variants are named like their structs.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $(#[doc = concat!("`", $label, "`")] $name($name),)*
        }

        impl Method {
            /// The class id (10 connection, 20 channel, 40 exchange, 50 queue, 60 basic,
            /// 85 confirm, 90 tx).
            pub fn class_id(&self) -> u16 {
                match self {
                    $(Method::$name(_) => $c,)*
                }
            }

            /// The method id within its class.
            pub fn method_id(&self) -> u16 {
                match self {
                    $(Method::$name(_) => $m,)*
                }
            }

            /// The spec name, e.g. `"basic.publish"`, `"queue.declare-ok"`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Method::$name(_) => $label,)*
                }
            }

            /// The spec name of a class/method id pair, if it is a known method.
            pub fn name_of(class_id: u16, method_id: u16) -> Option<&'static str> {
                match (class_id, method_id) {
                    $(($c, $m) => Some($label),)*
                    _ => None,
                }
            }

            /// Decode a method frame payload (class id, method id, arguments). Trailing bytes
            /// after the arguments are a syntax error.
            pub fn decode(payload: &[u8]) -> Result<Method, DecodeError> {
                let mut r = Reader::new(payload);
                let class_id = r.short().map_err(|e| e.context("method frame"))?;
                let method_id = r.short().map_err(|e| e.context("method frame"))?;
                let method = match (class_id, method_id) {
                    $(($c, $m) => Method::$name(
                        $name::decode_args(&mut r).map_err(|e| e.context($label))?,
                    ),)*
                    _ => return Err(DecodeError::UnknownMethod { class_id, method_id }),
                };
                if !r.buf.is_empty() {
                    return Err(DecodeError::Syntax(format!(
                        "{}: {} trailing bytes after the arguments",
                        method.name(),
                        r.buf.len()
                    )));
                }
                Ok(method)
            }

            fn write<S: Sink>(&self, s: &mut S) {
                s.short(&self.class_id());
                s.short(&self.method_id());
                match self {
                    $(Method::$name(x) => x.write_args(s),)*
                }
                s.finish();
            }
        }
    };
}

impl Method {
    /// Whether content (a header and body frames) follows this method: basic.publish,
    /// basic.return, basic.deliver and basic.get-ok.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }

    /// Append class id, method id and arguments (the method frame payload).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        self.encode_unreserved(out);
    }

    /// [`Method::encode`] for callers that already reserved room.
    #[inline]
    pub(crate) fn encode_unreserved(&self, out: &mut BytesMut) {
        let mut w = Writer::new(out);
        self.write(&mut w);
    }

    /// The exact size [`Method::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let mut s = Sizer::default();
        self.write(&mut s);
        s.len
    }
}

methods! {
    // connection (10)
    ConnectionStart (10, 10, "connection.start") {
        version_major: octet, version_minor: octet, server_properties: table,
        mechanisms: longstr, locales: longstr,
    }
    ConnectionStartOk (10, 11, "connection.start-ok") {
        client_properties: table, mechanism: shortstr, response: longstr, locale: shortstr,
    }
    ConnectionSecure (10, 20, "connection.secure") { challenge: longstr }
    ConnectionSecureOk (10, 21, "connection.secure-ok") { response: longstr }
    ConnectionTune (10, 30, "connection.tune") { channel_max: short, frame_max: long, heartbeat: short }
    ConnectionTuneOk (10, 31, "connection.tune-ok") { channel_max: short, frame_max: long, heartbeat: short }
    // reserved-1 = capabilities (shortstr), reserved-2 = insist (bit)
    ConnectionOpen (10, 40, "connection.open") { virtual_host: shortstr, _: reserved_shortstr, _: reserved_bit }
    // reserved-1 = known-hosts (shortstr)
    ConnectionOpenOk (10, 41, "connection.open-ok") { _: reserved_shortstr }
    ConnectionClose (10, 50, "connection.close") {
        reply_code: short, reply_text: shortstr, class_id: short, method_id: short,
    }
    ConnectionCloseOk (10, 51, "connection.close-ok") {}
    ConnectionBlocked (10, 60, "connection.blocked") { reason: shortstr }
    ConnectionUnblocked (10, 61, "connection.unblocked") {}
    ConnectionUpdateSecret (10, 70, "connection.update-secret") { new_secret: longstr, reason: shortstr }
    ConnectionUpdateSecretOk (10, 71, "connection.update-secret-ok") {}

    // channel (20)
    // reserved-1 = out-of-band (shortstr)
    ChannelOpen (20, 10, "channel.open") { _: reserved_shortstr }
    // reserved-1 = channel-id (longstr)
    ChannelOpenOk (20, 11, "channel.open-ok") { _: reserved_longstr }
    ChannelFlow (20, 20, "channel.flow") { active: bit }
    ChannelFlowOk (20, 21, "channel.flow-ok") { active: bit }
    ChannelClose (20, 40, "channel.close") {
        reply_code: short, reply_text: shortstr, class_id: short, method_id: short,
    }
    ChannelCloseOk (20, 41, "channel.close-ok") {}

    // exchange (40); `_: reserved_short` is the ticket
    ExchangeDeclare (40, 10, "exchange.declare") {
        _: reserved_short, exchange: shortstr, kind: shortstr, passive: bit, durable: bit,
        auto_delete: bit, internal: bit, no_wait: bit, arguments: table,
    }
    ExchangeDeclareOk (40, 11, "exchange.declare-ok") {}
    ExchangeDelete (40, 20, "exchange.delete") {
        _: reserved_short, exchange: shortstr, if_unused: bit, no_wait: bit,
    }
    ExchangeDeleteOk (40, 21, "exchange.delete-ok") {}
    ExchangeBind (40, 30, "exchange.bind") {
        _: reserved_short, destination: shortstr, source: shortstr, routing_key: shortstr,
        no_wait: bit, arguments: table,
    }
    ExchangeBindOk (40, 31, "exchange.bind-ok") {}
    ExchangeUnbind (40, 40, "exchange.unbind") {
        _: reserved_short, destination: shortstr, source: shortstr, routing_key: shortstr,
        no_wait: bit, arguments: table,
    }
    ExchangeUnbindOk (40, 51, "exchange.unbind-ok") {}

    // queue (50)
    QueueDeclare (50, 10, "queue.declare") {
        _: reserved_short, queue: shortstr, passive: bit, durable: bit, exclusive: bit,
        auto_delete: bit, no_wait: bit, arguments: table,
    }
    QueueDeclareOk (50, 11, "queue.declare-ok") {
        queue: shortstr, message_count: long, consumer_count: long,
    }
    QueueBind (50, 20, "queue.bind") {
        _: reserved_short, queue: shortstr, exchange: shortstr, routing_key: shortstr,
        no_wait: bit, arguments: table,
    }
    QueueBindOk (50, 21, "queue.bind-ok") {}
    QueuePurge (50, 30, "queue.purge") { _: reserved_short, queue: shortstr, no_wait: bit }
    QueuePurgeOk (50, 31, "queue.purge-ok") { message_count: long }
    QueueDelete (50, 40, "queue.delete") {
        _: reserved_short, queue: shortstr, if_unused: bit, if_empty: bit, no_wait: bit,
    }
    QueueDeleteOk (50, 41, "queue.delete-ok") { message_count: long }
    QueueUnbind (50, 50, "queue.unbind") {
        _: reserved_short, queue: shortstr, exchange: shortstr, routing_key: shortstr,
        arguments: table,
    }
    QueueUnbindOk (50, 51, "queue.unbind-ok") {}

    // basic (60)
    BasicQos (60, 10, "basic.qos") { prefetch_size: long, prefetch_count: short, global: bit }
    BasicQosOk (60, 11, "basic.qos-ok") {}
    BasicConsume (60, 20, "basic.consume") {
        _: reserved_short, queue: shortstr, consumer_tag: shortstr, no_local: bit, no_ack: bit,
        exclusive: bit, no_wait: bit, arguments: table,
    }
    BasicConsumeOk (60, 21, "basic.consume-ok") { consumer_tag: shortstr }
    BasicCancel (60, 30, "basic.cancel") { consumer_tag: shortstr, no_wait: bit }
    BasicCancelOk (60, 31, "basic.cancel-ok") { consumer_tag: shortstr }
    BasicPublish (60, 40, "basic.publish") {
        _: reserved_short, exchange: shortstr, routing_key: shortstr, mandatory: bit,
        immediate: bit,
    }
    BasicReturn (60, 50, "basic.return") {
        reply_code: short, reply_text: shortstr, exchange: shortstr, routing_key: shortstr,
    }
    BasicDeliver (60, 60, "basic.deliver") {
        consumer_tag: shortstr, delivery_tag: longlong, redelivered: bit, exchange: shortstr,
        routing_key: shortstr,
    }
    BasicGet (60, 70, "basic.get") { _: reserved_short, queue: shortstr, no_ack: bit }
    BasicGetOk (60, 71, "basic.get-ok") {
        delivery_tag: longlong, redelivered: bit, exchange: shortstr, routing_key: shortstr,
        message_count: long,
    }
    // reserved-1 in the 0-9-1 spec, `cluster-id` in RabbitMQ's: kept as a field (send "").
    BasicGetEmpty (60, 72, "basic.get-empty") { cluster_id: shortstr }
    BasicAck (60, 80, "basic.ack") { delivery_tag: longlong, multiple: bit }
    BasicReject (60, 90, "basic.reject") { delivery_tag: longlong, requeue: bit }
    BasicRecoverAsync (60, 100, "basic.recover-async") { requeue: bit }
    BasicRecover (60, 110, "basic.recover") { requeue: bit }
    BasicRecoverOk (60, 111, "basic.recover-ok") {}
    BasicNack (60, 120, "basic.nack") { delivery_tag: longlong, multiple: bit, requeue: bit }

    // confirm (85)
    ConfirmSelect (85, 10, "confirm.select") { no_wait: bit }
    ConfirmSelectOk (85, 11, "confirm.select-ok") {}

    // tx (90)
    TxSelect (90, 10, "tx.select") {}
    TxSelectOk (90, 11, "tx.select-ok") {}
    TxCommit (90, 20, "tx.commit") {}
    TxCommitOk (90, 21, "tx.commit-ok") {}
    TxRollback (90, 30, "tx.rollback") {}
    TxRollbackOk (90, 31, "tx.rollback-ok") {}
}
