//! `connect-storm`: N connections all at once; admitted, refused (1013/503), errors.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::args::Args;
use crate::conn::connect;
use crate::report::{round, Report};

pub(crate) async fn connect_storm(a: &Args, r: &mut Report) -> Result<u64, String> {
    let n = a.connections;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let url = a.url.clone();
        tasks.push(tokio::spawn(async move {
            match connect(&url).await {
                Err(e) if e.contains("503") => (0, 1, 0, None),
                Err(_) => (0, 0, 1, None),
                Ok(mut ws) => {
                    // admitted unless the first frame is a 1013 close
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(Ok(m)))
                            if m.as_close().is_some_and(|(c, _)| u16::from(c) == 1013) =>
                        {
                            (0, 1, 0, None)
                        }
                        Ok(None | Some(Err(_))) => (0, 0, 1, None),
                        _ => (1, 0, 0, Some(ws)),
                    }
                }
            }
        }));
    }
    let (mut admitted, mut refused, mut errors) = (0u64, 0u64, 0u64);
    let mut keep = Vec::new();
    for t in tasks {
        let (a1, r1, e1, ws) = t.await.map_err(|e| e.to_string())?;
        admitted += a1;
        refused += r1;
        errors += e1;
        keep.extend(ws);
    }
    let took = start.elapsed();
    r.put("attempted", n);
    r.put("admitted", admitted);
    r.put("refused_1013_or_503", refused);
    r.put("errors", errors);
    r.put("seconds", round(took.as_secs_f64(), 3));
    drop(keep);
    Ok(admitted + refused)
}
