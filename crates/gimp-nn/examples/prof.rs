use candle_core::{Device, Tensor};
use gimp_nn::nystrom::{NystromAttention, NystromConfig};
use gimp_nn::{Mode, ParamStore};
fn main() -> candle_core::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000);
    let residual = std::env::args().nth(2).as_deref() != Some("nores");
    let mut cfg = NystromConfig::transmil(512);
    cfg.residual = residual;
    let store = ParamStore::new(0);
    let attn = NystromAttention::new(&store.root_inference(), cfg)?;
    let x = Tensor::rand(0f32, 1f32, (1, n, 512), &Device::Cpu)?;
    let t = std::time::Instant::now();
    let y = attn.forward(&x, &Mode::eval())?;
    println!("{:?} {:.3}s", y.dims(), t.elapsed().as_secs_f64());
    Ok(())
}
