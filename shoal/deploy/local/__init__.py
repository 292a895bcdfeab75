"""The local runtime: a supervised fleet of server processes on this machine (warm-forked by a zygote)."""
