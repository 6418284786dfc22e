/*
 * main.c - `ferry`: global options and the command table.
 *
 * `ferry [GLOBAL OPTIONS] COMMAND [ARGS]`. Global options stop at the first
 * word that is not an option, the command's name; everything from the name on
 * is handed to the command, whose argv[0] is its name. Adding a command is
 * one line in `commands` plus its cmd_<name>.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    cli_command_fn run;
    const char *summary;
} commands[] = {
    {"pub", cmd_pub, "publish messages to a topic"},
    {"sub", cmd_sub, "receive messages of a consumer group"},
    {"peek", cmd_peek, "print a topic's stored messages, without a group"},
    {"topics", cmd_topics, "list topics, set one's retention (topics set), delete one"},
    {"groups", cmd_groups, "list consumer groups and their progress, delete one"},
    {"seek", cmd_seek, "move a consumer group to a sequence or a time"},
    {"dead", cmd_dead, "redrive dead letters to their group (dead replay)"},
    {"stats", cmd_stats, "live view of topics and groups: rates, lag (like top)"},
    {"relay", cmd_relay, "relay an application's outbox table to the broker"},
    {"bench", cmd_bench, "load generator: publish, consume, e2e, backlog"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fputs("Usage: ferry [OPTIONS] COMMAND [ARGS]\n"
          "\n"
          "Commands:\n",
          f);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fputs("  help     show help for a command\n"
          "\n"
          "Options (also accepted after the command name):\n" CLI_COMMON_HELP
          "  -V, --version        show the version\n"
          "\n"
          "'ferry COMMAND --help' describes a command. Exit status: 0 success,\n"
          "1 a runtime or broker error, 2 a usage error.\n",
          f);
}

static cli_command_fn find(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return commands[i].run;
    return NULL;
}

/* `ferry help [COMMAND]` is `ferry COMMAND --help`. */
static int help(struct cli *cli, int argc, char **argv)
{
    if (argc < 2) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    cli_command_fn run = find(argv[1]);
    if (!run)
        return cli_usage_error("help", "unknown command '%s'", argv[1]);
    char *args[] = {argv[1], "--help", NULL};
    optind = 0;
    return run(cli, 2, args);
}

/*
 * getopt_long takes any unambiguous prefix of a long option, so "--token
 * SECRET" would be read as --token-file and the secret echoed in "cannot
 * read SECRET". The option that names a secret's file is taken only in
 * full; a prefix of it (from "--tok": "--to" is seek's own option) is
 * refused without repeating the word after it.
 */
static int refuse_token_prefix(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *a = argv[i];
        size_t n = strcspn(a, "=");
        if (n > 2 && n < strlen("--token-file") && !strncmp(a, "--token-file", n) &&
            n >= strlen("--tok")) {
            fprintf(stderr,
                    "ferry: unknown option '%.*s': a token is read from a file, give "
                    "--token-file PATH in full\n",
                    (int)n, a);
            return CLI_EXIT_USAGE;
        }
    }
    return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    if (refuse_token_prefix(argc, argv) != CLI_EXIT_OK)
        return CLI_EXIT_USAGE;
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct cli cli = {0};
    const char *env = getenv("FERRY_SERVER");
    cli.server = env && *env ? env : FERRY_DEFAULT_SERVER;

    opterr = 0;
    int opt;
    /* '+': stop at the command name; ':': report a missing argument as ':'. */
    while ((opt = getopt_long(argc, argv, "+:hV", longopts, NULL)) != -1) {
        if (cli_common_option(&cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            usage(stdout);
            return CLI_EXIT_OK;
        case 'V':
            printf("ferry %s (libferry %s)\n", FERRY_VERSION_STRING, ferry_version());
            return CLI_EXIT_OK;
        default:
            return cli_bad_option(NULL, opt, argv);
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }

    const char *name = argv[optind];
    cli_command_fn run = strcmp(name, "help") == 0 ? help : find(name);
    if (!run) {
        fprintf(stderr, "ferry: unknown command '%s' (see 'ferry --help')\n", name);
        return CLI_EXIT_USAGE;
    }
    int cargc = argc - optind;
    char **cargv = argv + optind;
    optind = 0; /* a full getopt reset for the command's own parsing */
    return run(&cli, cargc, cargv);
}
