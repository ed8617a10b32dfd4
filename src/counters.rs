//! Counters declared once: [`stats!`] declares a public snapshot type, the live atomic
//! counters behind it, and (with the `metrics` feature) the Prometheus series each field
//! is exposed as. The exposition ([`crate::metrics`]) only iterates what is declared
//! here, so a new counter is one line in its `stats!` block.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter (a relaxed atomic).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a series is typed in the exposition.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

#[cfg(feature = "metrics")]
impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One Prometheus series a snapshot field is exposed as: its family (name, help, type)
/// and, for families split by reason or kind, the one label that tells it apart (the
/// source's own label — `server`, `rooms` — is added by the writer).
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) label: Option<(&'static str, &'static str)>,
}

/// The vocabulary of the series expressions in [`stats!`] blocks.
#[cfg(feature = "metrics")]
pub(crate) mod series {
    use super::Kind;
    pub(crate) use super::Series;

    /// A counter family (`…_total`).
    pub(crate) const fn counter(name: &'static str, help: &'static str) -> Series {
        Series {
            name,
            help,
            kind: Kind::Counter,
            label: None,
        }
    }

    /// A gauge family.
    pub(crate) const fn gauge(name: &'static str, help: &'static str) -> Series {
        Series {
            name,
            help,
            kind: Kind::Gauge,
            label: None,
        }
    }

    impl Series {
        /// This family's series with `key="value"` (e.g. `reason="origin"`).
        pub(crate) const fn with(self, key: &'static str, value: &'static str) -> Series {
            Series {
                label: Some((key, value)),
                ..self
            }
        }
    }
}

/// Declares a snapshot type of `u64` counters, optionally the live counters behind it,
/// and how each field is exposed to Prometheus.
///
/// ```text
/// stats! {
///     families {
///         // a family shared by several fields, told apart by a label
///         REJECTED = counter("street_x_rejected_total", "Requests refused, by reason.");
///     }
///     /// Counters of an X (public docs and attributes as usual).
///     #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
///     #[non_exhaustive]
///     pub struct XStats counted in XCounters {
///         /// Streams open now (set by the owner when it takes the snapshot).
///         set open => gauge("street_x_open", "Open now."),
///         /// Requests accepted (a live `Counter` in `XCounters`).
///         count accepted => counter("street_x_accepted_total", "Requests accepted."),
///         /// Refused: full.
///         count rejected_full => REJECTED.with("reason", "full"),
///         /// Not exposed (no `=>`).
///         count internal,
///         /// A non-`u64` field (set by the owner, never exposed).
///         set nested: OtherStats,
///     }
/// }
/// ```
///
/// - `count f`: a [`Counter`] field of the live struct (`counted in XCounters`, with an
///   optional `with { extra live-only fields }`), read by the generated
///   `XCounters::snapshot()`;
/// - `set f`: a snapshot field the owner fills in after `snapshot()` (default 0);
/// - `=> series`: the field is written to `/metrics` as that series
///   (`counter(name, help)`, `gauge(name, help)`, a family constant, `.with(key, value)`);
///   `XStats::visit` (with the `metrics` feature) hands every exposed field to the
///   exposition, which writes each family once.
macro_rules! stats {
    (
        $(families {
            $($(#[$fam_meta:meta])* $fam:ident = $fam_def:expr;)*
        })?
        $(#[$meta:meta])*
        pub struct $snap:ident $(counted in $live:ident $(with $extra:tt)?)? {
            $(
                $(#[$field_meta:meta])*
                $how:ident $field:ident $(: $ty:ty)? $(=> $series:expr)?
            ),* $(,)?
        }
    ) => {
        $($(
            $(#[$fam_meta])*
            #[cfg(feature = "metrics")]
            const $fam: $crate::counters::Series = {
                #[allow(unused_imports)]
                use $crate::counters::series::*;
                $fam_def
            };
        )*)?

        $(#[$meta])*
        pub struct $snap {
            $($(#[$field_meta])* pub $field: $crate::counters::stats!(@type $($ty)?),)*
        }

        #[cfg(feature = "metrics")]
        impl $snap {
            /// Every exposed field: its series and value.
            pub(crate) fn visit(&self, f: &mut dyn FnMut($crate::counters::Series, u64)) {
                #[allow(unused_imports)]
                use $crate::counters::series::*;
                $($( f($series, self.$field); )?)*
            }

            /// Every field: its name and whether it is exposed.
            #[cfg(test)]
            pub(crate) const FIELDS: &'static [(&'static str, bool)] =
                &[$((stringify!($field), $crate::counters::stats!(@exposed $($series)?)),)*];
        }

        $crate::counters::stats!(@counted [$($live $($extra)?)?] $snap [$($how $field,)*]);
    };

    (@counted [] $snap:ident [$($how:ident $field:ident,)*]) => {};
    (@counted [$live:ident $($extra:tt)?] $snap:ident [$($how:ident $field:ident,)*]) => {
        $crate::counters::stats!(@live $live [$($extra)?] [] $($how $field,)*);

        impl $live {
            /// The counters now (`set` fields are left at their default).
            pub(crate) fn snapshot(&self) -> $snap {
                $snap {
                    $($field: $crate::counters::stats!(@read $how self $field),)*
                }
            }
        }
    };

    (@type) => { u64 };
    (@type $ty:ty) => { $ty };

    (@exposed) => { false };
    (@exposed $series:expr) => { true };

    (@read count $s:ident $field:ident) => { $s.$field.get() };
    (@read set $s:ident $field:ident) => { ::core::default::Default::default() };

    // the live struct: `count` fields only, then the extra fields
    (@live $live:ident [$({$($extra:tt)*})?] [$($acc:tt)*]) => {
        /// The live counters (see `stats!`).
        #[derive(Debug, Default)]
        pub(crate) struct $live {
            $($acc)*
            $($($extra)*)?
        }
    };
    (@live $live:ident [$($extra:tt)?] [$($acc:tt)*] count $field:ident, $($rest:tt)*) => {
        $crate::counters::stats!(
            @live $live [$($extra)?] [$($acc)* pub(crate) $field: $crate::counters::Counter,] $($rest)*
        );
    };
    (@live $live:ident [$($extra:tt)?] [$($acc:tt)*] set $field:ident, $($rest:tt)*) => {
        $crate::counters::stats!(@live $live [$($extra)?] [$($acc)*] $($rest)*);
    };
}
pub(crate) use stats;
