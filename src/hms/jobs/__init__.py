"""Jobs over experiments, on top of everything else: the main job (run, main_job), loading an
experiment set teachers first (experiments), the scheduler over devices (schedule), one main job
per work dir (lock), the cost model and the --hours budget (plan, budget, throughput, flops) and
the benchmarks (bench, bench_scale)."""
