use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2048, 384), &d).unwrap();
    let w = Tensor::randn(0f32, 0.05, (1536, 384), &d).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..10 { let _ = x.matmul(&w.t().unwrap()).unwrap(); }
    println!("f32 {:?}", t.elapsed() / 10);
    for dt in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::F16] {
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, dt).unwrap()).unwrap();
        let _ = q.forward(&x).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..10 { let _ = q.forward(&x).unwrap(); }
        let a = q.forward(&x).unwrap();
        let b = x.matmul(&w.t().unwrap()).unwrap();
        let err = (a - &b).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        let mag = b.abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        println!("{dt:?} {:?} rel_err={}", t.elapsed() / 10, err / mag);
    }
}
