use candle_core::{Device, Tensor};
use gimp_models::aggregator::AggregatorConfig;
use gimp_models::gimp::{GeneEncoderConfig, Gimp, GimpConfig};
use gimp_models::group_msa::GroupMsaConfig;
use gimp_nn::optim::{Adam, AdamConfig};
use gimp_nn::{Mode, ParamStore};
use rand::SeedableRng;
use std::time::Instant;
#[global_allocator]
static ALLOC: gimp_nn::alloc::CachingAlloc = gimp_nn::alloc::CachingAlloc::new();
fn main() -> candle_core::Result<()> {
    let cfg = GimpConfig { aggregator: AggregatorConfig::gimp(1024), genes: GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)), n_classes: 2, head_dropout: 0.25 };
    let store = ParamStore::new(0);
    let model = Gimp::new(&store.root(), cfg)?;
    store.set_trainable("genes.", false);
    let mut opt = Adam::new(&store, AdamConfig::gimp());
    let window = Tensor::rand(0f32, 1f32, (6000, 1024), &Device::Cpu)?;
    let masked: Vec<usize> = (0..6000).step_by(2).collect();
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    for _ in 0..4 {
        let t = Instant::now();
        let m = model.masked_patch_modelling(&window, &masked, &mode)?;
        let f = t.elapsed();
        let t = Instant::now();
        let g = m.reconstruction.backward()?;
        let b = t.elapsed();
        let t = Instant::now();
        let grads = opt.collect(&g);
        opt.step_with(&grads, 1e-4)?;
        let o = t.elapsed();
        println!("fwd {f:?} bwd {b:?} opt {o:?}");
    }
    Ok(())
}
