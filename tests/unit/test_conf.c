/*
 * Unit tests of the node configuration (common/conf.h): the config file (`name = value` lines,
 * comments, blanks, the same checks as the flags, file:line in every error), the command line
 * overriding the file, and --replication-factor's default and limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/conf.h"
#include "common/err.h"

#define MAX_ARGS 32

/* A config file in TMPDIR (or /tmp) with exactly `len` bytes of `text`; removed by teardown. */
static char cfg_path[256];

static const char *write_config_n(const char *text, size_t len)
{
    const char *dir = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(cfg_path, sizeof(cfg_path), "%s/dkv-test-conf-XXXXXX", dir);
    int fd = mkstemp(cfg_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return cfg_path;
}

static const char *write_config(const char *text)
{
    return write_config_n(text, strlen(text));
}

static int teardown(void **state)
{
    (void)state;
    if (cfg_path[0] != '\0') {
        unlink(cfg_path);
        cfg_path[0] = '\0';
    }
    return 0;
}

/* Parses "dkv" followed by the NULL-terminated arguments; `err` gets the message. */
static int parse(dkv_conf_t *conf, char *err, size_t err_len, ...)
{
    char *argv[MAX_ARGS] = {"dkv"};
    int argc = 1;
    va_list ap;
    va_start(ap, err_len);
    for (;;) {
        char *a = va_arg(ap, char *);
        if (a == NULL) {
            break;
        }
        assert_true(argc < MAX_ARGS);
        argv[argc++] = a;
    }
    va_end(ap);
    err[0] = '\0';
    return dkv_conf_parse(argc, argv, conf, err, err_len);
}

/* Expects DKV_EINVAL with a message that contains every one of the NULL-terminated strings. */
static void expect_error(int rc, const char *err, ...)
{
    if (rc != DKV_EINVAL) {
        print_error("accepted, want an error\n");
    }
    assert_int_equal(rc, DKV_EINVAL);
    va_list ap;
    va_start(ap, err);
    for (;;) {
        const char *want = va_arg(ap, const char *);
        if (want == NULL) {
            break;
        }
        if (strstr(err, want) == NULL) {
            print_error("message \"%s\" lacks \"%s\"\n", err, want);
        }
        assert_non_null(strstr(err, want));
    }
    va_end(ap);
}

#define C3 "http://127.0.0.1:9001,http://127.0.0.1:9002,http://127.0.0.1:9003"

static void test_defaults_without_config(void **state)
{
    (void)state;
    dkv_conf_t c;
    char err[512];
    assert_int_equal(parse(&c, err, sizeof(err), NULL), 0);
    assert_string_equal(c.self, "http://127.0.0.1:8080");
    assert_int_equal(c.cluster_n, 1);
    assert_int_equal(c.replication_factor, 1);
    assert_string_equal(c.backup_dir, "");
    assert_false(c.fsync);
    assert_true(c.background_low_priority);
    dkv_conf_cleanup(&c);

    assert_int_equal(parse(&c, err, sizeof(err), "--self", "http://127.0.0.1:9002", "--listen",
                           "127.0.0.1:9002", "--cluster", C3, NULL),
                     0);
    assert_int_equal(c.cluster_n, 3);
    assert_int_equal(c.replication_factor, 3); /* default: N */
    dkv_conf_cleanup(&c);
}

static void test_config_file_sets_everything_it_names(void **state)
{
    (void)state;
    const char *path = write_config("# a dkv node\n"
                                    "\n"
                                    "listen = 127.0.0.1:9002\n"
                                    "   self=http://127.0.0.1:9002   \n"
                                    "cluster = " C3 "\n"
                                    "\t# indented comment\n"
                                    "data = /var/lib/dkv/a b#c\n"
                                    "vnodes = 16\r\n"
                                    "replication-factor = 2\n"
                                    "fsync = on\n"
                                    "hinted-handoff = off\n"
                                    "background-low-priority = off\n"
                                    "backup-dir = /var/backups/dkv\n"
                                    "log-level = warn\n"
                                    "tombstone-grace-ms = 0"); /* no final newline */
    dkv_conf_t c;
    char err[512];
    int rc = parse(&c, err, sizeof(err), "--config", path, NULL);
    if (rc != 0) {
        print_error("%s\n", err);
    }
    assert_int_equal(rc, 0);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 9002);
    assert_string_equal(c.self, "http://127.0.0.1:9002");
    assert_int_equal(c.cluster_n, 3);
    assert_string_equal(c.data_dir, "/var/lib/dkv/a b#c"); /* '#' inside a value is kept */
    assert_int_equal(c.vnodes, 16);
    assert_int_equal(c.replication_factor, 2);
    assert_true(c.fsync);
    assert_false(c.hinted_handoff);
    assert_false(c.background_low_priority);
    assert_true(c.read_repair); /* untouched: default */
    assert_string_equal(c.backup_dir, "/var/backups/dkv");
    assert_int_equal(c.log_level, DKV_LOG_WARN);
    assert_int_equal(c.tombstone_grace_ms, 0);
    dkv_conf_cleanup(&c);
}

static void test_command_line_wins_over_the_file(void **state)
{
    (void)state;
    const char *path = write_config("vnodes = 16\n"
                                    "data = /from/file\n"
                                    "fsync = off\n"
                                    "read-repair = off\n"
                                    "cluster = http://127.0.0.1:8080,http://127.0.0.1:8081\n");
    dkv_conf_t c;
    char err[512];
    /* Flags before and after --config alike override the file. */
    assert_int_equal(parse(&c, err, sizeof(err), "--vnodes", "32", "--config", path, "--data",
                           "/from/flag", "--fsync", "--cluster", "http://127.0.0.1:8080", NULL),
                     0);
    assert_int_equal(c.vnodes, 32);
    assert_string_equal(c.data_dir, "/from/flag");
    assert_true(c.fsync);
    assert_false(c.read_repair); /* only in the file */
    assert_int_equal(c.cluster_n, 1);
    assert_int_equal(c.replication_factor, 1);
    dkv_conf_cleanup(&c);
}

static void test_unknown_setting_names_file_and_line(void **state)
{
    (void)state;
    const char *path = write_config("vnodes = 16\n# ok\nvnode = 3\n");
    dkv_conf_t c;
    char err[512];
    char where[300];
    snprintf(where, sizeof(where), "%s:3:", path);
    expect_error(parse(&c, err, sizeof(err), "--config", path, NULL), err, where, "'vnode'",
                 "unknown", NULL);
    dkv_conf_cleanup(&c);
}

static void test_bad_value_names_file_line_and_reason(void **state)
{
    (void)state;
    struct {
        const char *text;
        const char *line;
        const char *reason;
    } cases[] = {
        {"vnodes = many\n", ":1:", "--vnodes: 'many' is not a whole number in 1..65536"},
        {"\n\nlisten = nowhere\n", ":3:", "--listen: 'nowhere' is not HOST:PORT"},
        {"fsync = yes\n", ":1:", "--fsync: 'yes' is not on or off"},
        {"read-repair =\n", ":1:", "--read-repair: '' is not on or off"},
        {"data = \n", ":1:", "--data: empty"},
        {"log-level = loud\n", ":1:", "--log-level"},
        {"replication-factor = 0\n", ":1:", "--replication-factor: '0'"},
        {"vnodes = 16\nvnodes = 32\n", ":2:", "'vnodes' is already set on line 1"},
        {"vnodes 16\n", ":1:", "expected 'name = value'"},
        {"--vnodes = 16\n", ":1:", "unknown setting '--vnodes'"},
        {"config = /etc/other.conf\n", ":1:", "cannot name another"},
        {"help = on\n", ":1:", "unknown setting 'help'"},
        {"= 3\n", ":1:", "unknown setting ''"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = write_config(cases[i].text);
        dkv_conf_t c;
        char err[512];
        char where[300];
        snprintf(where, sizeof(where), "%s%s", path, cases[i].line);
        int rc = parse(&c, err, sizeof(err), "--config", path, NULL);
        expect_error(rc, err, where, cases[i].reason, NULL);
        dkv_conf_cleanup(&c);
        teardown(NULL);
    }
}

static void test_unreadable_or_odd_files(void **state)
{
    (void)state;
    dkv_conf_t c;
    char err[512];
    expect_error(parse(&c, err, sizeof(err), "--config", "/nonexistent/dkv.conf", NULL), err,
                 "--config /nonexistent/dkv.conf", "No such file", NULL);
    dkv_conf_cleanup(&c);
    expect_error(parse(&c, err, sizeof(err), "--config", NULL), err, "--config needs a value",
                 NULL);
    dkv_conf_cleanup(&c);

    const char *path = write_config_n("vnodes = 1\0 6\n", 14);
    expect_error(parse(&c, err, sizeof(err), "--config", path, NULL), err, ":1:", "NUL", NULL);
    dkv_conf_cleanup(&c);
    teardown(NULL);

    char *big = malloc(5000);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    memcpy(big, "data = ", 7);
    path = write_config(big);
    free(big);
    expect_error(parse(&c, err, sizeof(err), "--config", path, NULL), err, ":1:", "longer than",
                 NULL);
    dkv_conf_cleanup(&c);
    teardown(NULL);

    path = write_config(""); /* empty: every default */
    assert_int_equal(parse(&c, err, sizeof(err), "--config", path, NULL), 0);
    assert_int_equal(c.vnodes, 8192);
    dkv_conf_cleanup(&c);
}

static void test_replication_factor_limits(void **state)
{
    (void)state;
    dkv_conf_t c;
    char err[512];
    const char *self[] = {"--listen", "127.0.0.1:9001", "--self", "http://127.0.0.1:9001"};
    for (unsigned rf = 1; rf <= 3; rf++) {
        char v[8];
        snprintf(v, sizeof(v), "%u", rf);
        assert_int_equal(parse(&c, err, sizeof(err), self[0], self[1], self[2], self[3],
                               "--cluster", C3, "--replication-factor", v, NULL),
                         0);
        assert_int_equal(c.replication_factor, rf);
        dkv_conf_cleanup(&c);
    }
    expect_error(parse(&c, err, sizeof(err), self[0], self[1], self[2], self[3], "--cluster", C3,
                       "--replication-factor", "4", NULL),
                 err, "--replication-factor 4 is larger than the cluster", "3 node", NULL);
    dkv_conf_cleanup(&c);
    expect_error(parse(&c, err, sizeof(err), "--replication-factor", "0", NULL), err,
                 "--replication-factor: '0' is not a whole number in 1..64", NULL);
    dkv_conf_cleanup(&c);
    expect_error(parse(&c, err, sizeof(err), "--replication-factor", "2", NULL), err,
                 "larger than the cluster", NULL);
    dkv_conf_cleanup(&c);
    /* From the file too, checked once the cluster is known (it may come later in the file). */
    const char *path = write_config("replication-factor = 3\ncluster = " C3 "\n"
                                    "self = http://127.0.0.1:9003\n");
    assert_int_equal(parse(&c, err, sizeof(err), "--config", path, NULL), 0);
    assert_int_equal(c.replication_factor, 3);
    dkv_conf_cleanup(&c);
    assert_int_equal(parse(&c, err, sizeof(err), "--config", path, "--replication-factor", "1",
                           NULL),
                     0);
    assert_int_equal(c.replication_factor, 1);
    dkv_conf_cleanup(&c);
}

static void test_read_fanout_and_speculative_retry(void **state)
{
    (void)state;
    dkv_conf_t c;
    char err[512];
    assert_int_equal(parse(&c, err, sizeof(err), NULL), 0);
    assert_int_equal(c.read_speculative, DKV_CONF_DEFAULT_READ_SPECULATIVE);
    assert_int_equal(c.speculative_retry_ms, 0); /* the observed p99 */
    dkv_conf_cleanup(&c);
    assert_int_equal(parse(&c, err, sizeof(err), "--read-fanout", "all", NULL), 0);
    assert_false(c.read_speculative);
    dkv_conf_cleanup(&c);
    assert_int_equal(parse(&c, err, sizeof(err), "--read-fanout", "speculative",
                           "--speculative-retry-ms", "25", NULL),
                     0);
    assert_true(c.read_speculative);
    assert_int_equal(c.speculative_retry_ms, 25);
    dkv_conf_cleanup(&c);
    expect_error(parse(&c, err, sizeof(err), "--read-fanout", "some", NULL), err,
                 "--read-fanout: 'some' is not all or speculative", NULL);
    dkv_conf_cleanup(&c);
    expect_error(parse(&c, err, sizeof(err), "--speculative-retry-ms", "-1", NULL), err,
                 "--speculative-retry-ms: '-1' is not a whole number in 0..600000", NULL);
    dkv_conf_cleanup(&c);
    /* In a config file, and the command line wins over it. */
    const char *path = write_config("read-fanout = speculative\nspeculative-retry-ms = 5\n");
    assert_int_equal(parse(&c, err, sizeof(err), "--config", path, NULL), 0);
    assert_true(c.read_speculative);
    assert_int_equal(c.speculative_retry_ms, 5);
    dkv_conf_cleanup(&c);
    assert_int_equal(parse(&c, err, sizeof(err), "--config", path, "--read-fanout", "all", NULL),
                     0);
    assert_false(c.read_speculative);
    assert_int_equal(c.speculative_retry_ms, 5);
    dkv_conf_cleanup(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_defaults_without_config, teardown),
        cmocka_unit_test_teardown(test_config_file_sets_everything_it_names, teardown),
        cmocka_unit_test_teardown(test_command_line_wins_over_the_file, teardown),
        cmocka_unit_test_teardown(test_unknown_setting_names_file_and_line, teardown),
        cmocka_unit_test_teardown(test_bad_value_names_file_line_and_reason, teardown),
        cmocka_unit_test_teardown(test_unreadable_or_odd_files, teardown),
        cmocka_unit_test_teardown(test_replication_factor_limits, teardown),
        cmocka_unit_test_teardown(test_read_fanout_and_speculative_retry, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
