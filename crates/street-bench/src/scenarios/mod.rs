//! The scenarios, one module each (`fanout` also runs `sse-fanout`).

mod connect_storm;
mod echo;
mod fanout;
mod idle;
mod restart;

pub(crate) use connect_storm::connect_storm;
pub(crate) use echo::echo;
pub(crate) use fanout::fanout;
pub(crate) use idle::idle;
pub(crate) use restart::restart;
