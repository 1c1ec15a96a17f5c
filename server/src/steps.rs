//! The critical path's timeline: the libraries wrap each step of an RPC
//! (namespaces, CNI ADD, overlay mount, runtime create, ...) in a span of
//! target [`TARGET`]; this layer times each one from creation to close and
//! files it under the RPC's span, where [`take`] reads the timeline when the
//! RPC completes. It runs whatever the log level, so the figures are there
//! for a benchmark without debug logging.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The target of a step's span.
pub const TARGET: &str = "berth_step";
/// The name of the span [`crate::rpc_trace`] opens per RPC.
pub const RPC_SPAN: &str = "rpc";

/// The steps of one RPC, in the order they ended.
#[derive(Default)]
struct Timeline(Vec<(&'static str, Duration)>);

struct Started(Instant);

pub struct StepLayer;

impl<S> Layer<S> for StepLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if attrs.metadata().target() == TARGET {
            extensions.insert(Started(Instant::now()));
        } else {
            extensions.insert(Timeline::default());
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(started) = span.extensions().get::<Started>().map(|s| s.0) else {
            return;
        };
        let Some(rpc) = span.scope().skip(1).find(|s| s.name() == RPC_SPAN) else {
            return;
        };
        if let Some(timeline) = rpc.extensions_mut().get_mut::<Timeline>() {
            timeline.0.push((span.name(), started.elapsed()));
        }
    }
}

/// Lets through the spans [`StepLayer`] needs, and nothing else.
pub struct StepFilter;

impl<S> Filter<S> for StepFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.is_span() && (meta.target() == TARGET || meta.name() == RPC_SPAN)
    }
}

/// The timeline of the RPC `span`, as `name=ms` pairs in the order the
/// steps ended ("netns=1.93 cni_add=8.41"), emptied as it is read; empty
/// when the span has no steps or no [`StepLayer`] is installed.
pub fn take(span: &tracing::Span) -> String {
    let Some(id) = span.id() else {
        return String::new();
    };
    tracing::dispatcher::get_default(|dispatch| {
        let Some(registry) = dispatch.downcast_ref::<Registry>() else {
            return String::new();
        };
        let Some(span) = registry.span(&id) else {
            return String::new();
        };
        let steps = span
            .extensions_mut()
            .get_mut::<Timeline>()
            .map(|t| std::mem::take(&mut t.0))
            .unwrap_or_default();
        format(&steps)
    })
}

fn format(steps: &[(&'static str, Duration)]) -> String {
    let mut out = String::new();
    for (name, took) in steps {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{name}={:.2}", took.as_secs_f64() * 1e3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn steps_are_filed_under_their_rpc_in_the_order_they_end() {
        let subscriber = tracing_subscriber::registry().with(StepLayer.with_filter(StepFilter));
        tracing::subscriber::with_default(subscriber, || {
            let rpc = tracing::info_span!("rpc", rpc = "RunPodSandbox");
            rpc.in_scope(|| {
                let outer = tracing::info_span!(target: "berth_step", "cni_add");
                outer.in_scope(|| {
                    // A step inside another, on a blocking thread's span.
                    let inner = tracing::info_span!(target: "berth_step", "netns");
                    std::thread::sleep(Duration::from_millis(2));
                    drop(inner);
                });
                drop(outer);
                // Not a step: not timed.
                drop(tracing::info_span!("other"));
            });
            let timeline = take(&rpc);
            let names: Vec<&str> = timeline
                .split(' ')
                .map(|pair| pair.split('=').next().unwrap())
                .collect();
            assert_eq!(names, ["netns", "cni_add"], "{timeline}");
            let netns: f64 = timeline.split(' ').next().unwrap()[6..].parse().unwrap();
            assert!(netns >= 2.0, "{timeline}");
            assert_eq!(take(&rpc), "", "read once");
        });
    }

    #[test]
    fn format_gives_milliseconds_with_two_decimals() {
        assert_eq!(
            format(&[
                ("netns", Duration::from_micros(1934)),
                ("cni_add", Duration::from_millis(8))
            ]),
            "netns=1.93 cni_add=8.00"
        );
    }
}
