//! Calls a live Ananke server through the C ABI (include/ananke.h) the way
//! Maze does from Zig: Maze-shaped constraints (a JSON schema, a list of
//! regexes, token masks built from the served vocabulary, priorities and
//! names), one generation, checks on the result, and every result freed.
//! Built and run by clients/rust/run_zig_test.sh against ANANKE_ADDR.
const std = @import("std");
// include/ananke.h (with stdio.h and string.h) translated by `zig translate-c`
// in run_zig_test.sh: Zig 0.16 removed @cImport.
const c = @import("c");

var failures: u32 = 0;

fn check(ok: bool, what: [*:0]const u8) void {
    if (!ok) {
        _ = c.fprintf(c.stderr, "FAIL: %s\n", what);
        failures += 1;
    }
}

fn span(text: ?[*:0]u8) []const u8 {
    return if (text) |t| std.mem.span(t) else "";
}

fn orNull(text: ?[*:0]u8) [*:0]const u8 {
    return if (text) |t| t else "(null)";
}

const person_schema =
    \\{"type": "object",
    \\ "properties": {
    \\   "name": {"type": "string", "minLength": 1, "maxLength": 12},
    \\   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    \\ "required": ["name", "age"],
    \\ "additionalProperties": false,
    \\ "x-guidance": {"whitespace_flexible": false}}
;

fn emptyConstraint() c.AnankeConstraintIR {
    var constraint: c.AnankeConstraintIR = undefined;
    _ = c.memset(&constraint, 0, @sizeOf(c.AnankeConstraintIR));
    constraint.grammar_syntax = c.ANANKE_GRAMMAR_SYNTAX_AUTO;
    return constraint;
}

/// Token ids of `text` in the served vocabulary, through the C ABI.
fn tokenIds(client: *const c.AnankeClient, text: [*:0]const u8, out: []u32) usize {
    const result = c.ananke_client_tokenize(client, text, false);
    defer c.ananke_tokenize_result_free(result);
    check(result != null and result.*.success, "tokenize succeeds");
    if (result == null or !result.*.success) return 0;
    const len = @min(result.*.token_ids_len, out.len);
    for (0..len) |i| out[i] = result.*.token_ids[i];
    return len;
}

fn testMazeConstraints(client: *const c.AnankeClient) void {
    // Forbid the tokens of a newline and of a tab: the output must stay on one line.
    var forbidden: [8]u32 = undefined;
    var count = tokenIds(client, "\n", forbidden[0..]);
    count += tokenIds(client, "\t", forbidden[count..]);
    check(count >= 2, "newline and tab have token ids");
    const masks = c.AnankeTokenMaskRules{
        .allowed_tokens = null,
        .allowed_tokens_len = 0,
        .forbidden_tokens = &forbidden,
        .forbidden_tokens_len = count,
    };
    const patterns = [_][*c]const u8{ "\\{.*\\}", "[^0-9]*[0-9]{1,3}[^0-9]*" };

    var constraints = [_]c.AnankeConstraintIR{ emptyConstraint(), emptyConstraint() };
    constraints[0].name = "person";
    constraints[0].priority = 10;
    constraints[0].json_schema = person_schema;
    constraints[1].name = "one-line-with-one-number";
    constraints[1].priority = 5;
    constraints[1].regex_patterns = &patterns;
    constraints[1].regex_patterns_len = patterns.len;
    constraints[1].token_masks = &masks;

    const intent = c.AnankeIntent{
        .raw_input = "a person",
        .prompt = "A person as compact JSON: ",
        .current_file = "src/person.zig",
        .language = "zig",
    };
    const options = c.AnankeGenerateOptions{
        .max_tokens = 64,
        .temperature = 0.0,
        .has_seed = true,
        .seed = 11,
        .timeout_ms = 0,
    };
    const result = c.ananke_client_generate(client, &intent, &constraints, constraints.len, &options);
    defer c.ananke_generation_result_free(result);
    check(result != null, "generate returns a result");
    if (result == null) return;
    const r = result.*;
    if (!r.success) {
        _ = c.fprintf(c.stderr, "error %s (%s)\n", orNull(r.@"error"), orNull(r.error_reason));
    }
    check(r.success and r.status_code == 0, "generation succeeds");
    const code = span(r.code);
    _ = c.printf("zig: %s (%zu tokens, %llu ms)\n", orNull(r.code), r.tokens_generated, @as(c_ulonglong, r.generation_time_ms));
    check(code.len > 1 and code[0] == '{' and code[code.len - 1] == '}', "output is one JSON object");
    check(std.mem.indexOfAny(u8, code, "\n\t") == null, "the token mask kept newlines and tabs out");
    check(std.mem.indexOf(u8, code, "\"age\":") != null, "the schema's required key is there");
    var digits: usize = 0;
    for (code) |ch| {
        if (ch >= '0' and ch <= '9') digits += 1;
    }
    check(digits >= 1 and digits <= 3, "the regex allowed one number of 1 to 3 digits");
    check(r.tokens_generated > 0, "tokens were generated");
    const provenance = span(r.provenance_json);
    check(std.mem.indexOf(u8, provenance, "\"CHECK_VERDICT_SATISFIED\"") != null, "the server's re-check is satisfied");
    check(std.mem.indexOf(u8, provenance, "\"person\"") != null, "provenance names the constraints");
    check(std.mem.indexOf(u8, provenance, "src/person.zig") != null, "provenance keeps the context");
}

fn testBadInput(client: *const c.AnankeClient) void {
    var constraint = emptyConstraint();
    constraint.name = "broken";
    const patterns = [_][*c]const u8{"(unclosed"};
    constraint.regex_patterns = &patterns;
    constraint.regex_patterns_len = patterns.len;
    const intent = c.AnankeIntent{ .raw_input = null, .prompt = "x", .current_file = null, .language = null };
    const result = c.ananke_client_generate(client, &intent, &constraint, 1, null);
    defer c.ananke_generation_result_free(result);
    check(result != null and !result.*.success, "a bad regex fails");
    if (result == null) return;
    check(result.*.status_code == 3, "INVALID_ARGUMENT");
    check(std.mem.eql(u8, span(result.*.error_reason), "REGEX_INVALID"), "reason REGEX_INVALID");
    check(result.*.provenance_json == null, "no provenance on failure");
}

pub fn main() u8 {
    const addr = c.getenv("ANANKE_ADDR");
    if (addr == null or addr[0] == 0) {
        _ = c.fprintf(c.stderr, "ANANKE_ADDR is not set\n");
        return 2;
    }
    const client = c.ananke_client_new(addr, null, 300000) orelse {
        _ = c.fprintf(c.stderr, "ananke_client_new failed\n");
        return 1;
    };
    defer c.ananke_client_free(client);
    testMazeConstraints(client);
    testBadInput(client);
    if (failures > 0) {
        _ = c.fprintf(c.stderr, "%u Zig check(s) failed\n", failures);
        return 1;
    }
    _ = c.printf("all Zig C ABI checks passed\n");
    return 0;
}
