//! `PublishStream`: many publishes on one bidirectional stream, at most
//! [`ControlConfig::stream_in_flight`](crate::ControlConfig) in flight, one result per
//! request carrying its sequence number.
//!
//! Order: publishes to the same channel are chained (each waits for the previous one of its
//! channel on this stream), so they are stored in the order sent; different channels proceed
//! concurrently and their results come back in completion order.

use std::{collections::HashMap, future::Future, pin::Pin, time::Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use herald_core::{ChannelName, PublishRequest};
use herald_proto::v1::{
    PublishError, PublishStreamRequest, PublishStreamResponse, publish_stream_response::Outcome,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{HeraldService, ServerStream};

type Pending = Pin<Box<dyn Future<Output = PublishStreamResponse> + Send>>;

pub(crate) fn publish_stream(
    svc: HeraldService,
    request: Request<Streaming<PublishStreamRequest>>,
) -> Result<Response<ServerStream<PublishStreamResponse>>, Status> {
    let start = Instant::now();
    if let Err(s) = svc.config.api_keys.check(request.metadata()) {
        let r: Result<(), Status> = Err(s.clone());
        svc.record("PublishStream", start, &r);
        return Err(s);
    }
    let deadline = crate::grpc_deadline(request.metadata());
    let input = request.into_inner();
    // Results wait here for the client; when full, the loop stops reading new requests.
    let (tx, rx) = mpsc::channel(svc.config.stream_in_flight.max(1));
    tokio::spawn(async move {
        let r = tokio::select! {
            r = run(&svc, input, &tx) => r,
            () = crate::until_deadline(deadline) => {
                Err(Status::deadline_exceeded("the call's deadline passed"))
            }
        };
        if let Err(s) = &r
            && s.code() != tonic::Code::Cancelled
        {
            let _ = tx.send(Err(s.clone())).await;
        }
        svc.record("PublishStream", start, &r);
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

async fn run(
    svc: &HeraldService,
    mut input: Streaming<PublishStreamRequest>,
    tx: &mpsc::Sender<Result<PublishStreamResponse, Status>>,
) -> Result<(), Status> {
    let max = svc.config.stream_in_flight.max(1);
    let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
    // Per channel: completion of this stream's newest publish to it.
    let mut tails: HashMap<ChannelName, oneshot::Receiver<()>> = HashMap::new();
    let mut input_done = false;
    loop {
        if input_done && in_flight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if tx.send(Ok(done)).await.is_err() {
                    return Err(Status::cancelled("client went away"));
                }
            }
            next = input.message(), if !input_done && in_flight.len() < max => match next {
                Ok(Some(req)) => {
                    if tails.len() > 4 * max {
                        tails.retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                    }
                    in_flight.push(start_one(svc, req, &mut tails));
                }
                Ok(None) => input_done = true,
                Err(status) => return Err(status),
            },
            () = tx.closed() => return Err(Status::cancelled("client went away")),
        }
    }
}

fn failed(sequence: u64, status: &Status) -> PublishStreamResponse {
    PublishStreamResponse {
        sequence,
        outcome: Some(Outcome::Error(PublishError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
        duplicate: false,
    }
}

fn start_one(
    svc: &HeraldService,
    req: PublishStreamRequest,
    tails: &mut HashMap<ChannelName, oneshot::Receiver<()>>,
) -> Pending {
    let sequence = req.sequence;
    let checked = HeraldService::channel(&req.channel).and_then(|channel| {
        let data = svc.payload(req.data)?;
        let idempotency_key = svc.key(req.idempotency_key)?;
        Ok(PublishRequest {
            channel,
            data,
            idempotency_key,
        })
    });
    let request = match checked {
        Ok(r) => r,
        Err(status) => {
            svc.metrics.refuse("invalid_request");
            return Box::pin(std::future::ready(failed(sequence, &status)));
        }
    };
    let (done, tail) = oneshot::channel::<()>();
    let previous = tails.insert(request.channel.clone(), tail);
    let svc = svc.clone();
    Box::pin(async move {
        if let Some(previous) = previous {
            // Err: the previous publish finished (its sender was dropped).
            let _ = previous.await;
        }
        let result = svc.publish_one(request).await;
        drop(done);
        match result {
            Ok(p) => PublishStreamResponse {
                sequence,
                outcome: Some(Outcome::Cursor(p.cursor.to_string())),
                duplicate: p.duplicate,
            },
            Err(status) => failed(sequence, &status),
        }
    })
}
