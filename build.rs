//! Compiles our `.proto` files into OUT_DIR with tonic-prost-build, plus a descriptor set for
//! server reflection and for parsing `config.pbtxt` (protobuf text format) at run time.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc means nothing has to be installed by hand.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        // Generated clients take any channel; the transport stays out of this crate.
        .build_transport(false)
        // Raw tensor payloads stay `bytes::Bytes`: decoding slices the request buffer instead of copying.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .file_descriptor_set_path(out_dir.join("tritium_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;

    // The worker plane compiles on its own, into a folder of its own: protoc hands prost every
    // imported file too, and the `inference` code it would write there again is not ours to use.
    // Kept out of FILE_DESCRIPTOR_SET so the frontend's reflection never lists the Worker service.
    println!("cargo:rerun-if-changed=proto/worker.proto");
    let worker_dir = out_dir.join("worker");
    std::fs::create_dir_all(&worker_dir)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".inference", "crate::inference")
        .out_dir(&worker_dir)
        .file_descriptor_set_path(out_dir.join("tritium_worker_descriptor.bin"))
        .compile_protos(&["proto/worker.proto"], &["proto"])?;

    // Third-party engines' own service (vLLM's `VllmEngine`), in a folder of its own too.
    println!("cargo:rerun-if-changed=proto/engine.proto");
    let engine_dir = out_dir.join("engine");
    std::fs::create_dir_all(&engine_dir)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".vllm.grpc.engine.GetTokenizerChunk.data")
        .out_dir(&engine_dir)
        .compile_protos(&["proto/engine.proto"], &["proto"])?;
    Ok(())
}
