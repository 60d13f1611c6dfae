//! What the library tells about itself: one place for every message that
//! is not a return value.
//!
//! Two macros, used everywhere instead of `eprintln!`:
//!
//! - `event!(LEVEL, field = value, ..; "format", args..)`: a lifecycle
//!   event (a worker started, exited, was killed or replaced; a task timed
//!   out; an initializer failed; a manager client was refused; an MPI rank
//!   changed state). With the `tracing` feature it is a `tracing` event of
//!   target `multiproc` with those fields; without it, nothing at all: its
//!   arguments are not even evaluated.
//! - `report!(LEVEL, field = value, ..; "format", args..)`: a real error a
//!   user must see even with no subscriber set up (queue items dropped at
//!   exit, a callback or hook that panicked). With the `tracing` feature it
//!   is a `tracing` event like the others (the subscriber decides where it
//!   goes); without it, the formatted message is printed on stderr, one
//!   line, as it always was.
//!
//! A field's value is an integer, a `bool` or a `&str`; `name: display = x`
//! records `x` with its `Display` (an error), `name: debug = x` with its
//! `Debug`. An `Option` of those records only when it is `Some`.
//!
//! What a process prints as its own output (the traceback line of a failed
//! `Process`, as Python prints it) is no event: it stays on that process's
//! stderr whatever the features.

/// A field value for the `tracing` macros, by how it is recorded.
#[cfg(feature = "tracing")]
macro_rules! event_field {
    (display $value:expr) => {
        ::tracing::field::display(&$value)
    };
    (debug $value:expr) => {
        ::tracing::field::debug(&$value)
    };
    ($value:expr) => {
        $value
    };
}

/// A lifecycle event: a `tracing` event with the feature, nothing without.
macro_rules! event {
    ($level:ident, $($key:ident $(: $how:ident)? = $value:expr),* ; $($msg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::event!(
            target: "multiproc",
            ::tracing::Level::$level,
            $($key = event_field!($($how)? $value),)*
            $($msg)+
        );
        #[cfg(not(feature = "tracing"))]
        {
            // Never run: keeps the arguments "used" without evaluating them.
            if false {
                $(let _ = &$value;)*
                let _ = format_args!($($msg)+);
            }
        }
    }};
}

/// A real error: a `tracing` event with the feature, a line on stderr
/// without it.
macro_rules! report {
    ($level:ident, $($key:ident $(: $how:ident)? = $value:expr),* ; $($msg:tt)+) => {{
        #[cfg(feature = "tracing")]
        event!($level, $($key $(: $how)? = $value),* ; $($msg)+);
        #[cfg(not(feature = "tracing"))]
        {
            $(let _ = &$value;)*
            ::std::eprintln!($($msg)+);
        }
    }};
}
