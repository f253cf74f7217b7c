"""What the benchmarks share, so that no benchmark is a library for another: statistics
(:mod:`.stats`), child processes (:mod:`.processes`), a private network namespace
(:mod:`.netns`) and the userspace delay proxy that runs inside one (:mod:`.delay_proxy`)."""
