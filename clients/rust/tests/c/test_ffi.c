/*
 * Tests the C ABI (include/ananke.h) against a live Ananke server whose
 * address is in ANANKE_ADDR. Built and run by clients/rust/run_c_test.sh,
 * optionally under valgrind, so every allocation must be freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ananke.h"

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
    ananke_generation_result_free(NULL);
    ananke_client_free(NULL);

    if (failures > 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all C ABI checks passed\n");
    return 0;
}
