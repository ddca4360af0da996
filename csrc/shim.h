#ifndef REDIS_LLM_SHIM_H
#define REDIS_LLM_SHIM_H

#include <Python.h>

#include "module_api.h"

#define SHIM_MAX_TYPES 8

extern RedisModuleCtx *shim_log_ctx;    /* logs from any thread */
extern PyObject *shim_bridge;           /* the redis_llm.bridge module */
extern RedisModuleType *shim_types[SHIM_MAX_TYPES];
extern int shim_ntypes;

PyGILState_STATE gil_lock(void);
void gil_unlock(PyGILState_STATE state);
void shim_log_python_error(const char *where);

PyObject *shim_init_python_module(void);
int shim_register(RedisModuleCtx *ctx, const char *module_path, RedisModuleString **argv,
                  int argc);

#endif
