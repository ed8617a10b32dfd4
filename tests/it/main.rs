#![allow(unreachable_pub, dead_code)]
//! Integration tests: real servers on loopback, real clients. One binary, one module per
//! capability.

mod common;

mod acks;
mod auth;
mod backpressure;
mod broadcast;
mod brokers;
mod capacity;
mod chaos;
mod deflate;
mod demo;
mod embed;
mod examples;
mod heartbeat;
mod history;
mod http_limits;
mod limits;
mod metrics;
mod node_interop;
mod origin;
mod package;
mod protocol;
mod proxies;
mod redis_cluster;
mod rooms;
mod shutdown;
mod socket_api;
mod sse;
mod street_js;
mod tls;
mod tokens;
mod wire;
