//! [`settle_cpu_threads`] changes the process environment, so it is the only test of this
//! binary (no other test thread reads the environment while it runs).

use openledger_inference_worker::threads::settle_cpu_threads;

#[test]
fn the_thread_count_is_settled_once_and_a_valid_setting_is_kept() {
	// SAFETY (every call below): this binary's one test, on the harness's one test thread; no
	// other thread of the process reads the environment meanwhile.
	unsafe { std::env::remove_var("RAYON_NUM_THREADS") };
	let candle = candle_core::utils::get_num_threads();
	assert!(candle >= 1);
	assert_eq!(unsafe { settle_cpu_threads() }, candle, "candle's own choice when unset");
	assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok(candle.to_string().as_str()));
	assert_eq!(unsafe { settle_cpu_threads() }, candle, "settled: the same count again");
	assert_eq!(candle_core::utils::get_num_threads(), candle, "candle reads it back");

	unsafe { std::env::set_var("RAYON_NUM_THREADS", "3") };
	assert_eq!(unsafe { settle_cpu_threads() }, 3, "a setting is kept");
	assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("3"));

	for unusable in ["0", "many", ""] {
		unsafe { std::env::set_var("RAYON_NUM_THREADS", unusable) };
		assert_eq!(unsafe { settle_cpu_threads() }, candle, "{unusable:?} is replaced");
		let now = std::env::var("RAYON_NUM_THREADS");
		assert_eq!(now.as_deref(), Ok(candle.to_string().as_str()), "{unusable:?}");
	}
}
