//! SPDY/3.1: frames, header compression, flow control and a server-side
//! session over any async byte stream.

pub mod conn;
pub mod flow;
pub mod frame;
pub mod zlib;

pub use conn::{Session, Stream, StreamError, StreamReader, StreamWriter};
pub use frame::{Codec, Frame, FrameError};
