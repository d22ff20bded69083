//! Reading a node's Prometheus metrics: [`scrape`] fetches `GET /metrics` from a node's metrics
//! port (plain HTTP/1.1, no dependency beyond tokio), [`parse`] turns the text format into
//! samples. Used by `dynamoctl top` and the tests; not a general Prometheus client.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One line of the text format: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key` (empty when absent).
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot reach the metrics endpoint http://{address}/metrics: {message}")]
    Unreachable { address: String, message: String },
    #[error("http://{address}/metrics answered {status}")]
    Status { address: String, status: String },
}

/// Fetches `http://{address}/metrics` (`address` is HOST:PORT), within `timeout`.
pub async fn scrape(address: &str, timeout: Duration) -> Result<String, ScrapeError> {
    let unreachable =
        |message: String| ScrapeError::Unreachable { address: address.into(), message };
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| unreachable(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unreachable("the answer is not an HTTP response".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(ScrapeError::Status { address: address.into(), status: status.into() });
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The samples of a Prometheus text-format exposition (comments skipped; a line that does not
/// parse is skipped too).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(line).collect()
}

fn line(l: &str) -> Option<Sample> {
    let (series, value) = l.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name, labels, value })
}

/// `a="x",b="y\"z"` -> {a: x, b: y"z}.
fn labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// The sum of every sample named `name` whose labels include all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        // Not `sum()`: that gives -0.0 for no samples.
        .fold(0.0, |a, b| a + b)
}

/// The `q` quantile (0..=1) of a histogram from its cumulative `_bucket` samples (`le` label),
/// interpolated linearly within the bucket, as PromQL's `histogram_quantile`. `None` without
/// observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in b {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let fraction = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return Some(lower + (le - lower) * fraction);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escaped_labels_are_parsed() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{op=\"put\",zone=\"a \\\"b\\\"\"} 3\nup 1\nh_bucket{le=\"+Inf\"} 2\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].label("zone"), "a \"b\"");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].labels.len(), 0);
        assert_eq!(samples[2].label("le"), "+Inf");
        assert_eq!(sum(&samples, "x_total", &[("op", "put")]), 3.0);
        assert_eq!(sum(&samples, "x_total", &[("op", "get")]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 10 observations <= 1, 10 more in (1, 2].
        let b = [(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(&b, 0.5), Some(1.0));
        assert_eq!(quantile(&b, 0.75), Some(1.5));
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.99), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
