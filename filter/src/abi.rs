//! The proxy-wasm ABI (0.2.1) as this filter uses it: the host functions it imports, and
//! the allocation export the host returns values through.
//!
//! Why not the SDK: the SDK's dispatcher exports every `proxy_on_*` callback, and Envoy
//! enters the VM for each exported one on every request (response headers, body, done,
//! delete, ...). Here the module exports only the callbacks it implements (see `lib.rs`);
//! Envoy skips the others without entering the VM. No function here panics: each returns the host's status.

use std::ptr::{null, null_mut};

/// A host status other than OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum BufferType {
    GrpcReceiveBuffer = 5,
    PluginConfiguration = 7,
}

const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const STREAM_HTTP_REQUEST: u32 = 0;
const METRIC_COUNTER: u32 = 0;

#[cfg_attr(target_arch = "wasm32", link(wasm_import_module = "env"))]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    #[allow(clippy::too_many_arguments)]
    #[cfg(not(feature = "sdk"))]
    fn proxy_grpc_stream(
        upstream_data: *const u8,
        upstream_size: usize,
        service_data: *const u8,
        service_size: usize,
        method_data: *const u8,
        method_size: usize,
        metadata_data: *const u8,
        metadata_size: usize,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_grpc_send(token: u32, data: *const u8, size: usize, end_stream: bool) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_get_status(
        return_code: *mut u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

/// The host allocates every value it returns to the module through this export; the
/// module owns the bytes afterwards (see [`take`]). The SDK build uses the SDK's, which
/// allocates the same layout (a `Vec<u8>` of capacity `size`).
///
/// Not zeroed: the host writes all `size` bytes before the module sees them, and every
/// data-returning hostcall on the hot path comes through here. Null (which the host
/// treats as a failed allocation) for a size no layout allows; the host never asks for 0.
#[cfg(not(feature = "sdk"))]
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    match std::alloc::Layout::array::<u8>(size) {
        // SAFETY: the layout's size is not zero.
        Ok(layout) if size > 0 => unsafe { std::alloc::alloc(layout) },
        _ => std::ptr::null_mut(),
    }
}

/// Takes ownership of `size` bytes the host wrote at `data` (allocated by
/// [`proxy_on_memory_allocate`], whose layout, `size` bytes aligned to 1, is that of a
/// `Vec<u8>` with capacity `size`).
fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    if size == 0 {
        // Nothing was allocated for an empty value.
        return Some(Vec::new());
    }
    // SAFETY: the host returns only pointers it got from `proxy_on_memory_allocate(size)`.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

fn status(code: u32) -> Result<(), Status> {
    if code == OK {
        Ok(())
    } else {
        Err(Status(code))
    }
}

fn bytes_result(code: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    match code {
        OK => Ok(take(data, size)),
        NOT_FOUND => Ok(None),
        code => Err(Status(code)),
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY (every call below): pointers and sizes describe live buffers of this module.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Host time in milliseconds since the Unix epoch.
pub fn now_ms() -> Option<u64> {
    let mut nanos = 0u64;
    let code = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (code == OK).then_some(nanos / 1_000_000)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn buffer(buffer_type: BufferType, size: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut len) = (null_mut(), 0usize);
    let code = unsafe { proxy_get_buffer_bytes(buffer_type as u32, 0, size, &mut data, &mut len) };
    bytes_result(code, data, len)
}

/// A property by its path, the segments joined by NUL (`b"xds\0cluster_name"`): callers
/// pass constants, so a read allocates only the value. `None` when absent.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0usize);
    let code = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut len) };
    bytes_result(code, data, len).ok().flatten()
}

/// A request header (the first value). Cheaper than the equivalent property: a property
/// read builds an arena and CEL wrappers in Envoy, a header read is one map lookup.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0usize);
    let code = unsafe {
        proxy_get_header_map_value(
            MAP_HTTP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut len,
        )
    };
    bytes_result(code, data, len).ok().flatten()
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    status(unsafe {
        proxy_replace_header_map_value(
            MAP_HTTP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// A local reply with one `content-type` header.
pub fn send_local_response(code: u32, content_type: &str, body: &[u8]) -> Result<(), Status> {
    let headers = serialize_pairs(&[("content-type", content_type.as_bytes())]);
    status(unsafe {
        proxy_send_local_response(
            code,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn resume_request() -> Result<(), Status> {
    status(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    status(unsafe { proxy_set_effective_context(context_id) })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    status(unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    status(unsafe { proxy_increment_metric(id, offset) })
}

/// Opens a gRPC stream on `grpc_service` (a serialized `GrpcService`, or a cluster name),
/// with an `authorization` header when given; returns its token.
pub fn open_grpc_stream(
    grpc_service: &[u8],
    service: &str,
    method: &str,
    authorization: Option<&str>,
) -> Result<u32, Status> {
    let pairs: Vec<(&str, &[u8])> = authorization
        .map(|value| ("authorization", value.as_bytes()))
        .into_iter()
        .collect();
    #[cfg(feature = "sdk")]
    {
        // The SDK's dispatcher routes stream callbacks only for tokens it opened.
        let upstream = std::str::from_utf8(grpc_service).map_err(|_| Status(u32::MAX))?;
        proxy_wasm::hostcalls::open_grpc_stream(upstream, service, method, pairs)
            .map_err(|e| Status(e as u32))
    }
    #[cfg(not(feature = "sdk"))]
    {
        let metadata = serialize_pairs(&pairs);
        let mut token = 0u32;
        status(unsafe {
            proxy_grpc_stream(
                grpc_service.as_ptr(),
                grpc_service.len(),
                service.as_ptr(),
                service.len(),
                method.as_ptr(),
                method.len(),
                metadata.as_ptr(),
                metadata.len(),
                &mut token,
            )
        })?;
        Ok(token)
    }
}

pub fn grpc_send(token: u32, message: &[u8]) -> Result<(), Status> {
    status(unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), false) })
}

pub fn grpc_cancel(token: u32) -> Result<(), Status> {
    status(unsafe { proxy_grpc_cancel(token) })
}

/// The gRPC status message of the stream being closed (in `proxy_on_grpc_close`).
pub fn grpc_status_message() -> Option<String> {
    let (mut code, mut data, mut len) = (0u32, null_mut(), 0usize);
    let result = unsafe { proxy_get_status(&mut code, &mut data, &mut len) };
    let bytes = bytes_result(result, data, len).ok().flatten()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The ABI's map encoding: count, then (key length, value length) pairs, then each key and
/// value followed by a NUL.
fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (key, value) in pairs {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::serialize_pairs;

    #[test]
    fn pairs_are_encoded_as_the_abi_map_format() {
        type Pairs<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Pairs, &[u8])] = &[
            (&[], &[0, 0, 0, 0]),
            (
                &[("a", b"bc")],
                &[1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0],
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(serialize_pairs(pairs), *want, "{pairs:?}");
        }
    }
}
