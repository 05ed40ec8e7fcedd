/* Unit tests for rpc/auth: loading the cluster secret file, and the handshake proofs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/err.h"
#include "rpc/auth.h"

static const char SECRET_A[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char SECRET_B[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/* Writes `text` to a new temporary file; returns its malloc'd path. */
static char *temp_file(const char *text)
{
    char *path = strdup("/tmp/dkv-auth-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static int load(const char *text, dkv_auth_t **out, char *why, size_t why_len)
{
    char *path = temp_file(text);
    int rc = dkv_auth_load(path, why, why_len, out);
    unlink(path);
    free(path);
    return rc;
}

static void test_load_accepts_one_or_two_secrets_and_rejects_the_rest(void **state)
{
    (void)state;
    char why[256];
    dkv_auth_t *a = NULL;
    char text[512];
    snprintf(text, sizeof(text), "%s\n", SECRET_A);
    assert_int_equal(load(text, &a, why, sizeof(why)), 0);
    dkv_auth_free(a);
    snprintf(text, sizeof(text), "%s  \r\n\n%s", SECRET_A, SECRET_B); /* CR, spaces, blank line */
    assert_int_equal(load(text, &a, why, sizeof(why)), 0);
    dkv_auth_free(a);

    assert_int_equal(load("", &a, why, sizeof(why)), DKV_EINVAL);
    assert_non_null(strstr(why, "no secret"));
    assert_int_equal(load("short\n", &a, why, sizeof(why)), DKV_EINVAL);
    assert_non_null(strstr(why, "shorter than 32"));
    assert_null(strstr(why, "short\n")); /* the message never quotes the secret */
    snprintf(text, sizeof(text), "%s\n%s\n%s\n", SECRET_A, SECRET_B, SECRET_A);
    assert_int_equal(load(text, &a, why, sizeof(why)), DKV_EINVAL);
    assert_non_null(strstr(why, "more than 2"));
    assert_true(dkv_auth_load("/nonexistent/dkv-secret", why, sizeof(why), &a) < 0);
}

static void test_proofs_check_with_the_same_secret_only(void **state)
{
    (void)state;
    char why[256];
    char text[512];
    dkv_auth_t *a = NULL;
    dkv_auth_t *b = NULL;
    dkv_auth_t *ba = NULL; /* rotating: B current, A previous */
    snprintf(text, sizeof(text), "%s\n", SECRET_A);
    assert_int_equal(load(text, &a, why, sizeof(why)), 0);
    snprintf(text, sizeof(text), "%s\n", SECRET_B);
    assert_int_equal(load(text, &b, why, sizeof(why)), 0);
    snprintf(text, sizeof(text), "%s\n%s\n", SECRET_B, SECRET_A);
    assert_int_equal(load(text, &ba, why, sizeof(why)), 0);

    uint8_t tr[32];
    dkv_auth_transcript(dkv_slice("hello frame", 11), tr);
    uint8_t ns[DKV_AUTH_NONCE_BYTES];
    dkv_auth_nonce(ns);
    uint8_t ns2[DKV_AUTH_NONCE_BYTES];
    dkv_auth_nonce(ns2);
    assert_memory_not_equal(ns, ns2, sizeof(ns));

    uint8_t ts[DKV_AUTH_TAG_BYTES];
    dkv_auth_server_tag(a, tr, ns, ts);
    assert_int_equal(dkv_auth_check_server(a, tr, ns, ts), 0);
    assert_int_equal(dkv_auth_check_server(b, tr, ns, ts), -1);
    assert_int_equal(dkv_auth_check_server(ba, tr, ns, ts), 1); /* A is its previous secret */
    assert_int_equal(dkv_auth_check_server(a, tr, ns2, ts), -1); /* another nonce */
    uint8_t tr2[32];
    dkv_auth_transcript(dkv_slice("hello frame!", 12), tr2);
    assert_int_equal(dkv_auth_check_server(a, tr2, ns, ts), -1); /* another HELLO */

    uint8_t tc[DKV_AUTH_TAG_BYTES];
    dkv_auth_client_tag(ba, 1, tr, ns, ts, tc); /* proves with the secret the server used */
    assert_true(dkv_auth_check_client(a, tr, ns, ts, tc));
    assert_false(dkv_auth_check_client(b, tr, ns, ts, tc));
    assert_false(dkv_auth_check_client(a, tr, ns2, ts, tc));
    /* Reflection: the server's own tag is no client proof. */
    assert_false(dkv_auth_check_client(a, tr, ns, ts, ts));
    dkv_auth_free(a);
    dkv_auth_free(b);
    dkv_auth_free(ba);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_accepts_one_or_two_secrets_and_rejects_the_rest),
        cmocka_unit_test(test_proofs_check_with_the_same_secret_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
