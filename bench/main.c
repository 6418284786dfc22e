/*
 * main.c - the standalone `ferry-bench` executable: `ferry-bench pub ...` is
 * `ferry bench pub ...` without the CLI around it.
 */
#include "bench.h"

int main(int argc, char **argv)
{
    static char name[] = "bench";
    argv[0] = name;
    return ferry_bench_main(argc, argv);
}
