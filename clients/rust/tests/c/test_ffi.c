/*
 * Tests the C ABI (include/ananke.h) against a live Ananke server whose
 * address is in ANANKE_ADDR. Built and run by clients/rust/run_c_test.sh,
 * optionally under valgrind, so every allocation must be freed.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ananke.h"

/* Maze's FFI GenerationResult (Maze README, "FFI Types"). A caller bound to
 * this layout must read the same offsets from AnankeGenerationResult. */
typedef struct {
    const char *code;
    bool success;
    const char *error;
    size_t tokens_generated;
    uint64_t generation_time_ms;
} MazeGenerationResult;

#define SAME_OFFSET(field)                                                              \
    _Static_assert(offsetof(AnankeGenerationResult, field) ==                           \
                       offsetof(MazeGenerationResult, field),                           \
                   "AnankeGenerationResult." #field " is not at Maze's offset")
SAME_OFFSET(code);
SAME_OFFSET(success);
SAME_OFFSET(error);
SAME_OFFSET(tokens_generated);
SAME_OFFSET(generation_time_ms);
_Static_assert(sizeof(AnankeGenerationResult) > sizeof(MazeGenerationResult),
               "the extras follow Maze's fields");

static int failures = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
            failures++;                                               \
        }                                                             \
    } while (0)

static const char *or_null(const char *s) { return s ? s : "(null)"; }

static const char *PERSON_SCHEMA =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 20},"
    "   \"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 120}},"
    " \"required\": [\"name\", \"age\"],"
    " \"additionalProperties\": false}";

static AnankeConstraintIR empty_constraint(void) {
    AnankeConstraintIR c;
    memset(&c, 0, sizeof c);
    c.grammar_syntax = ANANKE_GRAMMAR_SYNTAX_AUTO;
    return c;
}

static void test_json_schema(const AnankeClient *client) {
    AnankeIntent intent = {
        .raw_input = NULL,
        .prompt = "A person described as JSON:\n",
        .current_file = "person.json",
        .language = "json",
    };
    AnankeConstraintIR constraint = empty_constraint();
    constraint.name = "person";
    constraint.priority = 1;
    constraint.json_schema = PERSON_SCHEMA;
    AnankeGenerateOptions options = {
        .max_tokens = 96, .temperature = 0.0f, .has_seed = true, .seed = 7, .timeout_ms = 0};

    AnankeGenerationResult *result =
        ananke_client_generate(client, &intent, &constraint, 1, &options);
    CHECK(result != NULL, "no result");
    if (result == NULL) return;
    CHECK(result->success, "error %s (%s)", or_null(result->error), or_null(result->error_reason));
    CHECK(result->status_code == 0, "status %d", result->status_code);
    CHECK(result->code != NULL && result->code[0] == '{', "output %s", or_null(result->code));
    CHECK(result->error == NULL && result->error_reason == NULL, "error set on success");
    CHECK(result->tokens_generated > 0, "no tokens");
    CHECK(result->provenance_json != NULL && result->provenance_json[0] == '{' &&
              strstr(result->provenance_json, "\"requestId\"") != NULL,
          "provenance %s", or_null(result->provenance_json));
    printf("json: %s (%zu tokens, %llu ms)\n", or_null(result->code), result->tokens_generated,
           (unsigned long long)result->generation_time_ms);
    ananke_generation_result_free(result);
}

static void test_bad_schema(const AnankeClient *client) {
    AnankeIntent intent = {.raw_input = "x", .prompt = NULL, .current_file = NULL, .language = NULL};
    AnankeConstraintIR constraint = empty_constraint();
    constraint.name = "bad";
    constraint.json_schema = "{\"type\": \"nope\"}";

    AnankeGenerationResult *result =
        ananke_client_generate(client, &intent, &constraint, 1, NULL);
    CHECK(result != NULL, "no result");
    if (result == NULL) return;
    CHECK(!result->success, "a bad schema succeeded: %s", or_null(result->code));
    CHECK(result->status_code == 3, "status %d, want 3 (INVALID_ARGUMENT)", result->status_code);
    CHECK(result->error_reason != NULL && strcmp(result->error_reason, "JSON_SCHEMA_INVALID") == 0,
          "reason %s", or_null(result->error_reason));
    CHECK(result->error != NULL && result->error[0] != '\0', "no error message");
    CHECK(result->code != NULL && result->code[0] == '\0', "code not empty on failure");
    CHECK(result->provenance_json == NULL, "provenance on failure");
    printf("bad schema: %s\n", or_null(result->error));
    ananke_generation_result_free(result);
}

static void test_refused_arguments(const AnankeClient *client) {
    /* Refused before sending: NULL intent, NULL array with a length. */
    AnankeGenerationResult *result = ananke_client_generate(client, NULL, NULL, 0, NULL);
    CHECK(result != NULL && !result->success && result->status_code == 3 &&
              result->error_reason == NULL,
          "NULL intent accepted");
    ananke_generation_result_free(result);

    AnankeIntent intent = {.raw_input = NULL, .prompt = "p", .current_file = NULL, .language = NULL};
    result = ananke_client_generate(client, &intent, NULL, 2, NULL);
    CHECK(result != NULL && !result->success && result->status_code == 3,
          "NULL constraints with length 2 accepted");
    ananke_generation_result_free(result);

    CHECK(ananke_client_new(NULL, NULL, 0) == NULL, "NULL address accepted");
    CHECK(ananke_client_new("not a uri", NULL, 0) == NULL, "bad address accepted");

    AnankeClientOptions options;
    memset(&options, 0, sizeof options);
    options.client_certificate_pem = "-----BEGIN CERTIFICATE-----";
    CHECK(ananke_client_new_with_options("https://127.0.0.1:1", &options) == NULL,
          "client certificate without its key accepted");
    options.client_certificate_pem = NULL;
    options.root_certificates_pem = "-----BEGIN CERTIFICATE-----";
    CHECK(ananke_client_new_with_options("http://127.0.0.1:1", &options) == NULL,
          "TLS options with a plaintext address accepted");
}

/* The options constructor reaches the same server (one attempt, own deadline). */
static void test_client_with_options(const char *addr) {
    AnankeClientOptions options;
    memset(&options, 0, sizeof options);
    options.timeout_ms = 300000;
    options.max_attempts = 1;
    AnankeClient *client = ananke_client_new_with_options(addr, &options);
    CHECK(client != NULL, "ananke_client_new_with_options(%s) failed", addr);
    if (client == NULL) return;
    const char *choices[] = {"(yes|no)"};
    AnankeConstraintIR c = empty_constraint();
    c.regex_patterns = choices;
    c.regex_patterns_len = 1;
    AnankeIntent intent = {.raw_input = NULL, .prompt = "Yes or no? ", .current_file = NULL,
                           .language = NULL};
    AnankeGenerationResult *result = ananke_client_generate(client, &intent, &c, 1, NULL);
    CHECK(result->success, "error %s", or_null(result->error));
    CHECK(strcmp(result->code, "yes") == 0 || strcmp(result->code, "no") == 0, "code %s",
          result->code);
    ananke_generation_result_free(result);
    ananke_client_free(client);
}

int main(void) {
    const char *addr = getenv("ANANKE_ADDR");
    if (addr == NULL || addr[0] == '\0') {
        fprintf(stderr, "ANANKE_ADDR is not set\n");
        return 2;
    }
    AnankeClient *client = ananke_client_new(addr, NULL, 300000);
    if (client == NULL) {
        fprintf(stderr, "ananke_client_new(%s) failed\n", addr);
        return 1;
    }
    test_json_schema(client);
    test_bad_schema(client);
    test_refused_arguments(client);
    ananke_client_free(client);
    test_client_with_options(addr);
    ananke_generation_result_free(NULL);
    ananke_client_free(NULL);

    if (failures > 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all C ABI checks passed\n");
    return 0;
}
