/*
 * cmd_bench.c - `ferry bench ...`: the load generator from bench/.
 *
 * Hands its arguments to ferry_bench_main (bench/bench.h). The global
 * --server (or $FERRY_SERVER), which the bench cannot see, is passed on as
 * `--server HOST:PORT` right after the subcommand name, so that a --server
 * given after it still wins, and as $FERRY_SERVER. A build without bench/
 * (FERRY_HAVE_BENCH undefined) says so and fails.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

#ifdef FERRY_HAVE_BENCH
#include "bench.h"
#endif

int cmd_bench(struct cli *cli, int argc, char **argv)
{
#ifdef FERRY_HAVE_BENCH
    if (setenv("FERRY_SERVER", cli->server, 1) != 0)
        return cli_fail("bench", FERRY_ENOMEM, "cannot set FERRY_SERVER");
    if (argc < 2 || argv[1][0] == '-')
        return ferry_bench_main(argc, argv);

    /* bench SUBCOMMAND --server HOST:PORT ARGS... */
    char **args = malloc(((size_t)argc + 3) * sizeof *args);
    if (!args)
        return cli_fail("bench", FERRY_ENOMEM, "");
    args[0] = argv[0];
    args[1] = argv[1];
    args[2] = "--server";
    args[3] = (char *)cli->server;
    for (int i = 2; i < argc; i++)
        args[i + 2] = argv[i];
    args[argc + 2] = NULL;
    int rc = ferry_bench_main(argc + 2, args);
    free(args);
    return rc;
#else
    (void)cli;
    (void)argc;
    (void)argv;
    fputs("ferry: bench: this ferry was built without the load generator\n", stderr);
    return CLI_EXIT_FAIL;
#endif
}
