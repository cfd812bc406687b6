//! The Remote Workers API (`google.devtools.remoteworkers.v1test2`), the
//! part a bot needs: the `Bots` service's `CreateBotSession` and
//! `UpdateBotSession`, and their messages.
//!
//! These protos are not in the `bazel-remote-apis` crate, so the messages
//! are written here by hand, only the fields a bot reads or writes (prost
//! skips the others when decoding). Field numbers from
//! `google/devtools/remoteworkers/v1test2/bots.proto` and `worker.proto`
//! (googleapis, as vendored by BuildGrid 0.4.4), checked against BuildGrid
//! 0.4.4's generated `bots_pb2.py`/`worker_pb2.py` (a wrong number fails
//! silently: the server would see an empty field). The unit test below
//! pins the encoding.

use std::time::Duration;

use anyhow::Result;
use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use tonic::codegen::http::uri::PathAndQuery;

use crate::reapi::{status_error, Svc};

/// `BotSession`: a bot's state while in contact with the server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BotSession {
    /// Chosen by the server in CreateBotSession.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Unique within the farm; a new session with this id ends older ones.
    #[prost(string, tag = "2")]
    pub bot_id: String,
    /// A [`BotStatus`]; must be set in every update.
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    /// When the server ends a silent session (and gives its leases to
    /// other bots), as the server last answered: the bot's keepalives
    /// are timed from it ([`keepalive_interval`]). A bot sends it back
    /// unchanged, as it does the version.
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<Timestamp>,
    /// BuildGrid keeps its own counter here (an integer as text): a bot
    /// sends back what the server last answered.
    #[prost(string, tag = "7")]
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

/// `Lease`: one piece of work assigned to the bot. BuildGrid's payload is
/// the whole REAPI `Action`; the result the bot reports is an
/// `ActionResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    /// Set by the bot when COMPLETED: the lease's status, not the action's.
    #[prost(message, optional, tag = "3")]
    pub status: Option<RpcStatus>,
    #[prost(string, tag = "7")]
    pub id: String,
    #[prost(message, optional, tag = "8")]
    pub payload: Option<Any>,
    #[prost(message, optional, tag = "9")]
    pub result: Option<Any>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

/// `Worker`: the devices of the bot; the first is the primary device,
/// whose properties are what BuildGrid matches jobs against.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
}

/// `Device.Property`: a key may repeat (the device supports any value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateBotSessionRequest {
    /// The instance name.
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBotSessionRequest {
    /// The session's name (from CreateBotSession).
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

/// `type_url` of an Any holding a REAPI message.
pub fn type_url(message: &str) -> String {
    format!("type.googleapis.com/build.bazel.remote.execution.v2.{message}")
}

/// A client of the Bots service over a REAPI channel.
#[derive(Clone)]
pub struct BotsClient {
    grpc: tonic::client::Grpc<Svc>,
}

impl BotsClient {
    pub(crate) fn new(svc: Svc) -> BotsClient {
        BotsClient {
            grpc: tonic::client::Grpc::new(svc),
        }
    }

    pub async fn create(&mut self, req: CreateBotSessionRequest) -> Result<BotSession> {
        self.unary(req, "CreateBotSession", Duration::from_secs(30))
            .await
    }

    /// An update; the server may hold it (a long poll) until it has work
    /// for the bot, at most about 80% of `deadline` in BuildGrid.
    pub async fn update(
        &mut self,
        req: UpdateBotSessionRequest,
        deadline: Duration,
    ) -> Result<BotSession> {
        self.unary(req, "UpdateBotSession", deadline).await
    }

    async fn unary<Req: prost::Message + 'static>(
        &mut self,
        req: Req,
        method: &'static str,
        deadline: Duration,
    ) -> Result<BotSession> {
        self.grpc
            .ready()
            .await
            .map_err(|e| anyhow::anyhow!("Bots.{method}: the channel is not ready: {e}"))?;
        let path = PathAndQuery::from_maybe_shared(format!(
            "/google.devtools.remoteworkers.v1test2.Bots/{method}"
        ))
        .expect("a valid gRPC path");
        let mut request = tonic::Request::new(req);
        request.set_timeout(deadline);
        let codec = tonic_prost::ProstCodec::<Req, BotSession>::default();
        // Past the deadline the server has given up too.
        match tokio::time::timeout(
            deadline + Duration::from_secs(5),
            self.grpc.unary(request, path, codec),
        )
        .await
        {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|s| status_error(s, &format!("Bots.{method}"))),
            Err(_) => anyhow::bail!("Bots.{method}: no answer within {deadline:?}"),
        }
    }
}

/// How often a bot that runs a lease should tell the server it is
/// alive, `now` being this machine's clock: a third of the time the
/// server's last answer gave the session (`expire_time`), so that two
/// keepalives may fail or be slow before the session ends, within
/// [`MIN_KEEPALIVE`, `MAX_KEEPALIVE`]. The server's price is per
/// update (BuildGrid: ~25 ms of CPU, its lease bookkeeping in SQL), so a
/// farm with a keepalive timeout of a minute pays none while a batch of a
/// few seconds runs, where a fixed 2 s was most of the server's cost of a
/// long action. Read against this machine's clock, as any deadline the
/// server states is: farm machines keep time (NTP) to well within the
/// minimum. A session without `expire_time`, or one already past it, gets
/// the minimum.
pub fn keepalive_interval(session: &BotSession, now: std::time::SystemTime) -> Duration {
    let Some(t) = session.expire_time else {
        return MIN_KEEPALIVE;
    };
    let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) else {
        return MIN_KEEPALIVE;
    };
    let expire =
        Duration::from_secs(t.seconds.max(0) as u64) + Duration::from_nanos(t.nanos.max(0) as u64);
    match expire.checked_sub(since_epoch) {
        Some(left) => (left / 3).clamp(MIN_KEEPALIVE, MAX_KEEPALIVE),
        None => MIN_KEEPALIVE,
    }
}

/// The most often a bot at work updates its session: BuildGrid 0.4.4
/// answers a session it gave 10 s (`cargo xtask farm`'s tests) every
/// ~3.3 s.
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(2);
/// The least often: a lease the server cancelled (a client's
/// CancelOperation) is seen at the next keepalive, so its compile runs
/// on at most this long.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn keepalives_come_a_third_of_the_session_s_time_apart() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: i64| BotSession {
            expire_time: Some(Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            keepalive_interval(&at(1_000_060), now),
            Duration::from_secs(20)
        );
        // Bounded both ways: BuildGrid's default of 600 s, a short one.
        assert_eq!(keepalive_interval(&at(1_000_600), now), MAX_KEEPALIVE);
        assert_eq!(keepalive_interval(&at(1_000_003), now), MIN_KEEPALIVE);
        // Past, or never said: the minimum.
        assert_eq!(keepalive_interval(&at(999_000), now), MIN_KEEPALIVE);
        assert_eq!(
            keepalive_interval(&BotSession::default(), now),
            MIN_KEEPALIVE
        );
    }

    /// The bytes of a session, spelled out field by field: tags 1..7 as
    /// bots.proto numbers them (BotSession.leases = 5, Lease.id = 7,
    /// Lease.state = 2, Device.properties = 2 …). Cross-checked: BuildGrid
    /// 0.4.4's `bots_pb2.BotSession(...)` of the same values serializes to
    /// these bytes.
    #[test]
    fn field_numbers_are_the_protos() {
        let s = BotSession {
            name: "n".into(),
            bot_id: "b".into(),
            status: BotStatus::Ok as i32,
            worker: Some(Worker {
                devices: vec![Device {
                    handle: "h".into(),
                    properties: vec![Property {
                        key: "k".into(),
                        value: "v".into(),
                    }],
                }],
            }),
            leases: vec![Lease {
                id: "l".into(),
                state: LeaseState::Completed as i32,
                ..Default::default()
            }],
            expire_time: Some(Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            version: String::new(),
        };
        let want: Vec<u8> = vec![
            0x0a, 1, b'n', // name = 1
            0x12, 1, b'b', // bot_id = 2
            0x18, 1, // status = 3: OK
            0x22, 13, // worker = 4
            0x0a, 11, // devices = 1
            0x0a, 1, b'h', // handle = 1
            0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // properties = 2 {key 1, value 2}
            0x2a, 5, // leases = 5
            0x10, 4, // state = 2: COMPLETED
            0x3a, 1, b'l', // id = 7
            0x32, 2, 0x08, 1, // expire_time = 6 {seconds 1}
        ];
        assert_eq!(s.encode_to_vec(), want);
    }
}
