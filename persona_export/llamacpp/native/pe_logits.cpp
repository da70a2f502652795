// pe-logits: print the logits a GGUF model gives for lists of token ids.
//
// Usage: pe-logits MODEL.gguf TOKENS.txt OUT.bin [n_threads]
//   TOKENS.txt  one prompt per line, token ids separated by spaces
//   OUT.bin     for each prompt: int32 n_tokens, int32 n_vocab, then n_tokens*n_vocab float32
//               (the logits after each position, row-major), all little-endian.
// Built by `persona-export vendor` against the vendored libllama; used by `verify` to compare
// the GGUF with the Hugging Face model on exactly the same token ids.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void * /*user*/) {
    if (level >= GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf TOKENS.txt OUT.bin [n_threads]\n", argv[0]);
        return 2;
    }
    const int n_threads = argc > 4 ? atoi(argv[4]) : 2;

    std::vector<std::vector<llama_token>> prompts;
    size_t max_len = 1;
    {
        std::ifstream in(argv[2]);
        if (!in) {
            fprintf(stderr, "error: cannot read %s\n", argv[2]);
            return 1;
        }
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream ss(line);
            std::vector<llama_token> ids;
            long id;
            while (ss >> id) {
                ids.push_back((llama_token) id);
            }
            if (!ids.empty()) {
                max_len = ids.size() > max_len ? ids.size() : max_len;
                prompts.push_back(ids);
            }
        }
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) {
        fprintf(stderr, "error: cannot load model %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) max_len;
    cparams.n_batch = (uint32_t) max_len;
    cparams.n_ubatch = (uint32_t) max_len;
    cparams.n_seq_max = 1;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "error: cannot create a context of %zu tokens\n", max_len);
        return 1;
    }

    FILE * out = fopen(argv[3], "wb");
    if (!out) {
        fprintf(stderr, "error: cannot write %s\n", argv[3]);
        return 1;
    }
    for (const auto & ids : prompts) {
        for (llama_token id : ids) {
            if (id < 0 || id >= n_vocab) {
                fprintf(stderr, "error: token id %d outside the vocabulary (%d)\n", id, n_vocab);
                return 1;
            }
        }
        llama_memory_clear(llama_get_memory(ctx), true);
        const int32_t n = (int32_t) ids.size();
        llama_batch batch = llama_batch_init(n, 0, 1);
        for (int32_t i = 0; i < n; ++i) {
            batch.token[i] = ids[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = n;
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "error: llama_decode failed\n");
            return 1;
        }
        fwrite(&n, sizeof(n), 1, out);
        fwrite(&n_vocab, sizeof(n_vocab), 1, out);
        for (int32_t i = 0; i < n; ++i) {
            fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t) n_vocab, out);
        }
        llama_batch_free(batch);
    }
    fclose(out);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
