/* A chat through npurt's C ABI: the turns on one session, answers streamed to stdout,
 * then the errors a caller gets for bad arguments. capi/tests/c_abi.rs builds and runs
 * it.
 *
 *   cc -I capi/include capi/examples/chat.c -L target/release -lnpurt -o chat
 *   ./chat [--precision P] [--system TEXT] [--max-tokens N] MODEL ITEM...
 *
 * An ITEM is a question (one turn) or `--image PATH` (attached to the next question). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npurt.h"

static bool print_piece(const char *piece, size_t len, void *user) {
    size_t *pieces = user;
    ++*pieces;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true;
}

static int fail(const char *what, npurt_status s) {
    fprintf(stderr, "%s: status %d: %s\n", what, (int)s, npurt_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *precision = NULL, *system = NULL;
    uint32_t max_tokens = 32;
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--precision") == 0) precision = argv[i + 1];
        else if (strcmp(argv[i], "--system") == 0) system = argv[i + 1];
        else if (strcmp(argv[i], "--max-tokens") == 0) max_tokens = (uint32_t)atoi(argv[i + 1]);
        else break;
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: %s [--precision P] [--system TEXT] [--max-tokens N] MODEL ITEM...\n",
                argv[0]);
        return 2;
    }
    const char *model_path = argv[i++];
    printf("npurt %s\n", npurt_version());
    npurt_model *model = NULL;
    npurt_status s = npurt_model_load(model_path, NULL, precision, 2, 1024, &model);
    if (s != NPURT_OK) return fail("load", s);
    npurt_session *session = NULL;
    s = npurt_session_new(model, system, &session);
    if (s != NPURT_OK) return fail("session", s);
    /* The session keeps the model alive. */
    npurt_model_free(model);

    npurt_generate_options opts;
    npurt_generate_options_default(&opts);
    opts.max_tokens = max_tokens;
    for (int turn = 1; i < argc; i++) {
        if (strcmp(argv[i], "--image") == 0 && i + 1 < argc) {
            s = npurt_session_attach_image(session, argv[++i]);
            if (s != NPURT_OK) return fail("image", s);
            continue;
        }
        size_t pieces = 0;
        char *text = NULL;
        printf("turn %d: ", turn);
        s = npurt_chat(session, argv[i], &opts, print_piece, &pieces, &text);
        if (s != NPURT_OK) return fail("chat", s);
        uint32_t used = 0, size = 0;
        npurt_session_context(session, &used, &size);
        printf("\nanswer %d: %zu bytes in %zu pieces; context %u of %u\n", turn, strlen(text),
               pieces, used, size);
        npurt_string_free(text);
        turn++;
    }

    /* Errors name the problem and leave the session usable. */
    npurt_model *none = NULL;
    s = npurt_model_load("/nonexistent/model.gguf", NULL, NULL, 0, 0, &none);
    printf("missing model: status %d: %s\n", (int)s, npurt_last_error());
    s = npurt_model_load(model_path, NULL, "w3a7", 0, 0, &none);
    printf("unknown precision: status %d: %s\n", (int)s, npurt_last_error());
    s = npurt_session_attach_image(session, "/nonexistent/image.png");
    printf("missing image: status %d: %s\n", (int)s, npurt_last_error());
    s = npurt_chat(session, NULL, NULL, NULL, NULL, NULL);
    printf("null message: status %d: %s\n", (int)s, npurt_last_error());
    opts.temperature = -1.0f;
    s = npurt_chat(session, "Hi", &opts, NULL, NULL, NULL);
    printf("negative temperature: status %d: %s\n", (int)s, npurt_last_error());
    opts.temperature = 0.0f;
    opts.speculate = 99;
    s = npurt_chat(session, "Hi", &opts, NULL, NULL, NULL);
    printf("draft too long: status %d: %s\n", (int)s, npurt_last_error());

    npurt_session_free(session);
    return 0;
}
