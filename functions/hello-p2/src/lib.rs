//! The same hello answer as `hello`, but as a WASIp2 `wasi:http/proxy`
//! component exporting `wasi:http/incoming-handler@0.2.x`, so the host's
//! p2 path is exercised too. Two paths misbehave on purpose, for the
//! host's tests: `…/silent` never answers and `…/exit` exits after it has.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HelloP2;

impl wasip2::exports::http::incoming_handler::Guest for HelloP2 {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        // `…/silent`: returns without an answer, saying why only on stderr.
        if path.ends_with("/silent") {
            eprintln!("hello-p2: no answer on purpose");
            return;
        }
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let resp = OutgoingResponse::new(headers);
        resp.set_status_code(200).expect("200 is a valid status");
        let body = resp.body().expect("body is taken once");

        // Hand the response head over before streaming the body.
        ResponseOutparam::set(response_out, Ok(resp));

        let mut out = body.write().expect("stream is taken once");
        // wasip2 implements `io::Write` for output-stream, waiting on check-write as needed.
        out.write_all(b"Hello from edgeinfer\n")
            .expect("write body");
        out.flush().expect("flush body");
        drop(out); // the stream must be dropped before the body is finished
        OutgoingBody::finish(body, None).expect("finish body");
        // `…/exit`: exit 0 once the answer is whole, as a command-minded
        // guest may; the call succeeded all the same.
        if path.ends_with("/exit") {
            wasip2::cli::exit::exit(Ok(()));
        }
    }
}

wasip2::http::proxy::export!(HelloP2);
