/* npurt's C ABI: on-device LLM inference for apps in C, C++, Swift (iOS) and Kotlin or
 * Java through JNI (Android). Link libnpurt.so / libnpurt.dylib (cdylib) or libnpurt.a
 * (staticlib), built by `cargo build --release -p npurt-capi`.
 *
 * Every function returns an npurt_status; on failure npurt_last_error() names the
 * problem (a thread-local message, valid until the next call on that thread). Null
 * pointers, strings that are not UTF-8 and options out of range are
 * NPURT_INVALID_ARGUMENT. No panic crosses the boundary (NPURT_PANIC). A model may be
 * shared by sessions on any threads; a session is used by one thread at a time.
 * Strings in and out are UTF-8. */
#ifndef NPURT_H
#define NPURT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum npurt_status {
    NPURT_OK = 0,
    NPURT_INVALID_ARGUMENT = 1,
    /* The model file or directory could not be loaded (missing, truncated, lying). */
    NPURT_MODEL_ERROR = 2,
    /* The prompt does not fit the context left (reset the session or open another). */
    NPURT_CONTEXT_OVERFLOW = 3,
    /* Any other error at run time (the backend, the memory budget, ...). */
    NPURT_RUNTIME_ERROR = 4,
    /* A bug in npurt: a panic, caught at the boundary. */
    NPURT_PANIC = 5,
    /* An image that could not be read, decoded or encoded (corrupt, too large). */
    NPURT_IMAGE_ERROR = 6
} npurt_status;

typedef struct NpurtModel npurt_model;
typedef struct NpurtSession npurt_session;

typedef struct npurt_generate_options {
    uint32_t max_tokens;      /* most tokens to generate (also stops at EOS) */
    float temperature;        /* 0: greedy */
    uint32_t top_k;           /* 0: off */
    float top_p;              /* 1: off */
    float repetition_penalty; /* 1: off */
    uint64_t seed;            /* same seed, same text */
    uint32_t speculate;       /* speculative decoding by prompt lookup: most tokens
                                 drafted a step, 1 to 7; 0: off */
} npurt_generate_options;

/* A piece of the answer (UTF-8, `len` bytes, not NUL-terminated) as it becomes final;
 * return false to stop generating. */
typedef bool (*npurt_token_callback)(const char *piece, size_t len, void *user);

const char *npurt_last_error(void);
const char *npurt_version(void);

/* A .gguf file or an HF / BlueLM-V model directory. backend ("cpu", "wgpu") and
 * precision ("w4a16", "w4a8", "w8a16", "w8a8", "f32") may be NULL for the defaults,
 * threads and ctx 0. */
npurt_status npurt_model_load(const char *path, const char *backend, const char *precision,
                              uint32_t threads, uint32_t ctx, npurt_model **out);
/* Sessions opened on the model keep it alive until they are freed. */
void npurt_model_free(npurt_model *model);

/* system: the conversation's system message, or NULL. */
npurt_status npurt_session_new(const npurt_model *model, const char *system,
                               npurt_session **out);
void npurt_session_free(npurt_session *session);
/* Forgets the conversation and the KV cache (the system message stays). */
npurt_status npurt_session_reset(npurt_session *session);
/* Positions of the context in use, and its size (either pointer may be NULL). */
npurt_status npurt_session_context(const npurt_session *session, uint32_t *used,
                                   uint32_t *size);

/* 128 tokens, greedy, no top-k / top-p / penalty, seed 0, no drafts. */
void npurt_generate_options_default(npurt_generate_options *opts);

/* Attaches an image (PNG, JPEG, WebP file) to the next chat message, on a model with a
 * vision part (a BlueLM-V directory). Encoding starts at once and the conversation up
 * to the image is prefilled while the message is still being typed. */
npurt_status npurt_session_attach_image(npurt_session *session, const char *path);

/* One chat turn: the message (with the images attached since the last turn) joins the
 * session's conversation, which is rendered with the model's chat template; only what
 * the session does not hold yet is fed, and the answer is streamed through callback
 * (may be NULL), returned in *out_text (if out_text is not NULL; free it with
 * npurt_string_free) and kept in the conversation. When the conversation and an answer
 * of max_tokens outgrow the context, its oldest exchanges are dropped first. opts may
 * be NULL for the defaults. */
npurt_status npurt_chat(npurt_session *session, const char *message,
                        const npurt_generate_options *opts, npurt_token_callback callback,
                        void *user, char **out_text);
/* Generation from a raw prompt (no chat template) after what the session holds. */
npurt_status npurt_generate(npurt_session *session, const char *prompt,
                            const npurt_generate_options *opts, npurt_token_callback callback,
                            void *user, char **out_text);
void npurt_string_free(char *s);

#ifdef __cplusplus
}
#endif

#endif /* NPURT_H */
