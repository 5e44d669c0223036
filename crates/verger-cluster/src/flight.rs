//! An executor's Flight service (shuffle and result data) with a door: only the roles that fetch data
//! (executors reading shuffle partitions, clients reading a job's result) are served, and only for job ids
//! of the form Ballista makes (`[A-Za-z0-9_-]`). Ballista turns the ticket's job id into a path under its
//! work folder, so an unchecked id (`../…`, or an absolute path, which replaces the work folder) would read
//! any `data.arrow` file the executor can.
//!
//! It does not check that the caller took part in the job: any executor or client of the cluster may fetch
//! any job's data by its id (docs/cluster.md's threat model).

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo, SchemaResult, Ticket,
};
use ballista_core::serde::decode_protobuf;
use ballista_core::serde::scheduler::Action as BallistaAction;
use ballista_executor::flight_service::BallistaFlightService;
use tonic::{Request, Response, Status, Streaming};

use crate::security::{role_of, Role};

/// The action Ballista fetches whole shuffle files by.
const BLOCK_TRANSPORT: &str = "IO_BLOCK_TRANSPORT";

/// [`BallistaFlightService`] behind the role and job-id checks.
pub struct ShuffleFetchesOnly {
    inner: BallistaFlightService,
}

impl ShuffleFetchesOnly {
    pub fn new(work_dir: String) -> Self {
        ShuffleFetchesOnly {
            inner: BallistaFlightService::new(work_dir),
        }
    }
}

/// The caller's role from its verified certificate: executors and clients fetch, nobody else.
fn admit<T>(request: &Request<T>) -> Result<(), Status> {
    let role = request
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|cert| role_of(cert)));
    match role {
        Some(Role::Executor | Role::Client) => Ok(()),
        Some(role) => Err(Status::permission_denied(format!(
            "the {} role fetches no shuffle data",
            role.name()
        ))),
        None => Err(Status::unauthenticated("no cluster certificate")),
    }
}

/// A job id Ballista could have made, never a path.
pub fn check_job_id(job_id: &str) -> Result<(), Status> {
    let valid = !job_id.is_empty()
        && job_id.len() <= 64
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match valid {
        true => Ok(()),
        false => Err(Status::invalid_argument(format!(
            "{job_id:?} is not a job id ([A-Za-z0-9_-], at most 64)"
        ))),
    }
}

/// The job id of a fetch `ticket` (a Ballista action), checked.
fn check_fetch(ticket: &[u8]) -> Result<(), Status> {
    match decode_protobuf(ticket) {
        Ok(BallistaAction::FetchPartition { job_id, .. }) => check_job_id(job_id.as_str()),
        Err(e) => Err(Status::invalid_argument(format!("not a fetch: {e}"))),
    }
}

type Served<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl FlightService for ShuffleFetchesOnly {
    type HandshakeStream = <BallistaFlightService as FlightService>::HandshakeStream;
    type ListFlightsStream = <BallistaFlightService as FlightService>::ListFlightsStream;
    type DoGetStream = <BallistaFlightService as FlightService>::DoGetStream;
    type DoPutStream = <BallistaFlightService as FlightService>::DoPutStream;
    type DoExchangeStream = <BallistaFlightService as FlightService>::DoExchangeStream;
    type DoActionStream = <BallistaFlightService as FlightService>::DoActionStream;
    type ListActionsStream = <BallistaFlightService as FlightService>::ListActionsStream;

    async fn do_get(&self, request: Request<Ticket>) -> Served<Self::DoGetStream> {
        admit(&request)?;
        check_fetch(&request.get_ref().ticket)?;
        self.inner.do_get(request).await
    }

    async fn do_action(&self, request: Request<Action>) -> Served<Self::DoActionStream> {
        admit(&request)?;
        if request.get_ref().r#type == BLOCK_TRANSPORT {
            check_fetch(&request.get_ref().body)?;
        }
        self.inner.do_action(request).await
    }

    async fn handshake(&self, request: Request<Streaming<HandshakeRequest>>) -> Served<Self::HandshakeStream> {
        admit(&request)?;
        self.inner.handshake(request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Served<Self::ListFlightsStream> {
        admit(&request)?;
        self.inner.list_flights(request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Served<FlightInfo> {
        admit(&request)?;
        self.inner.get_flight_info(request).await
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Served<PollInfo> {
        admit(&request)?;
        self.inner.poll_flight_info(request).await
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Served<SchemaResult> {
        admit(&request)?;
        self.inner.get_schema(request).await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Served<Self::DoPutStream> {
        admit(&request)?;
        self.inner.do_put(request).await
    }

    async fn do_exchange(&self, request: Request<Streaming<FlightData>>) -> Served<Self::DoExchangeStream> {
        admit(&request)?;
        self.inner.do_exchange(request).await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Served<Self::ListActionsStream> {
        admit(&request)?;
        self.inner.list_actions(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_names_never_paths() {
        for good in ["aBc1234", "job_1-2"] {
            assert!(check_job_id(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "../x", "/etc", "a/b", "a.b", "a b", &"x".repeat(65)] {
            let refused = check_job_id(bad).expect_err(bad);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
