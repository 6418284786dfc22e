/*
 * bench.h - the Ferry load generator, as a library.
 *
 * The `ferry` command-line tool links this library and hands it everything
 * after `ferry` on the command line, so that `ferry bench pub ...` runs the
 * publish benchmark (and consume, e2e, backlog the others); the standalone `ferry-bench` executable
 * does the same.
 */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

/* Runs `bench SUBCOMMAND [OPTIONS]`. argv[0] is "bench" (only used in
 * messages); argv[1] is the subcommand ("pub", "consume", "e2e" or
 * "backlog"). Prints results to stdout and errors to stderr. Returns the
 * process exit status: 0 on success, 1 when the benchmark failed (broker
 * unreachable, a publish failed, a message never arrived), 2 for a usage
 * error. */
int ferry_bench_main(int argc, char **argv);

#endif /* FERRY_BENCH_H */
