"""What the tests share that is not a test: the embedded-default run, the local Hub server, running the scripts in
process, and generated class-per-folder trees."""
