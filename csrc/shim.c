/* The Redis module: starts CPython inside redis-server and hands every
 * command, type callback and fork to redis_llm.bridge. Everything that can
 * live in Python does; what is here needs a C function pointer, the GIL or
 * the fork hooks. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

#define RM_DEFINE(ret, name, args) ret(*RedisModule_##name) args = NULL;
MODULE_API(RM_DEFINE)
#undef RM_DEFINE

RedisModuleCtx *shim_log_ctx;
PyObject *shim_bridge;
RedisModuleType *shim_types[SHIM_MAX_TYPES];
int shim_ntypes;
static pthread_t main_thread;

/* ---- the one GIL helper pair ------------------------------------------- */

PyGILState_STATE gil_lock(void) { return PyGILState_Ensure(); }
void gil_unlock(PyGILState_STATE state) { PyGILState_Release(state); }

void shim_log_python_error(const char *where) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
    RedisModule_Log(shim_log_ctx, "warning", "%s: %s", where, msg ? msg : "unknown Python error");
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyErr_Clear();
}

/* ---- fork: Redis forks from its main thread for BGSAVE, AOF rewrite and
 * full syncs. The child must not inherit a GIL owned by a thread that does
 * not exist in it, so the forking thread holds the GIL across fork(). ---- */

static PyGILState_STATE fork_gil;

static int forking_from_main(void) { return pthread_equal(pthread_self(), main_thread); }

static void before_fork(void) {
    if (!forking_from_main()) return;
    fork_gil = gil_lock();
    PyOS_BeforeFork();
}

static void after_fork_parent(void) {
    if (!forking_from_main()) return;
    PyOS_AfterFork_Parent();
    gil_unlock(fork_gil);
}

static void after_fork_child(void) {
    if (!forking_from_main()) return;
    PyOS_AfterFork_Child();
    gil_unlock(fork_gil);
}

/* ---- start-up ---------------------------------------------------------- */

static int fetch_api(RedisModuleCtx *ctx) {
    /* Redis stores its API getter as the first field of the load context. */
    int (*get_api)(const char *, void *) = ((void **)ctx)[0];
#define RM_FETCH(ret, name, args)                                                                  \
    if (get_api("RedisModule_" #name, (void *)&RedisModule_##name) != RM_OK) {                              \
        if (RedisModule_Log) RedisModule_Log(ctx, "warning", "redis-server lacks RedisModule_" #name "; need 7.0+"); \
        return RM_ERR;                                                                             \
    }
    MODULE_API(RM_FETCH)
#undef RM_FETCH
    return RM_OK;
}

/* C extensions (numpy, hnswlib) resolve CPython's symbols globally, but Redis
 * dlopens modules with RTLD_LOCAL: re-open libpython with RTLD_GLOBAL. */
static int promote_libpython(RedisModuleCtx *ctx) {
    Dl_info info;
    if (!dladdr((void *)Py_InitializeFromConfig, &info) || !info.dli_fname) return RM_ERR;
    if (!dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD)) {
        RedisModule_Log(ctx, "warning", "cannot re-open %s globally: %s", info.dli_fname, dlerror());
        return RM_ERR;
    }
    return RM_OK;
}

/* The virtual environment (if any) holding this library: the nearest
 * ancestor directory with a pyvenv.cfg. */
static int find_venv_python(const char *dir, char *python, size_t size) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (int depth = 0; depth < 6; depth++) {
        char cfg[PATH_MAX + 16];
        snprintf(cfg, sizeof cfg, "%s/pyvenv.cfg", path);
        if (access(cfg, R_OK) == 0) {
            int n = snprintf(python, size, "%s/bin/python3", path);
            return n > 0 && (size_t)n < size && access(python, X_OK) == 0;
        }
        char *parent = dirname(path);
        if (strcmp(parent, path) == 0) break;
        memmove(path, parent, strlen(parent) + 1);
    }
    return 0;
}

static int start_python(RedisModuleCtx *ctx, const char *package_dir) {
    if (Py_IsInitialized()) {
        RedisModule_Log(ctx, "warning", "another module already runs a Python interpreter here");
        return RM_ERR;
    }
    if (PyImport_AppendInittab("_redis_llm_shim", shim_init_python_module) < 0) return RM_ERR;
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0; /* SIGINT/SIGTERM belong to Redis */
    config.parse_argv = 0;
    config.site_import = 1;
    PyStatus status = PyConfig_SetBytesArgv(&config, 1, (char *[]){"redis-server", NULL});
    char python[PATH_MAX];
    char *site_dir = strdup(package_dir);
    site_dir = dirname(site_dir);
    if (!PyStatus_Exception(status) && find_venv_python(site_dir, python, sizeof python))
        status = PyConfig_SetBytesString(&config, &config.executable, python);
    else if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.executable, REDIS_LLM_BUILD_PYTHON);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        RedisModule_Log(ctx, "warning", "cannot start Python: %s", status.err_msg ? status.err_msg : "?");
        return RM_ERR;
    }
    /* Import redis_llm from the directory this library was installed in. */
    PyObject *sys_path = PySys_GetObject("path");
    PyObject *site = PyUnicode_DecodeFSDefault(site_dir);
    free(site_dir);
    if (!sys_path || !site || PyList_Insert(sys_path, 0, site) < 0) return RM_ERR;
    Py_DECREF(site);
    shim_bridge = PyImport_ImportModule("redis_llm.bridge");
    if (!shim_bridge) {
        shim_log_python_error("cannot import redis_llm.bridge");
        return RM_ERR;
    }
    return RM_OK;
}

__attribute__((visibility("default")))
int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (fetch_api(ctx) != RM_OK) return RM_ERR;
    /* "llm", not the "LLM" of the first README: Redis prefixes the INFO fields
     * (llm_pool_size) and config names (llm.pool-size) with the module name,
     * as written, and monitoring reads them (README: "Operating it"). */
    if (RedisModule_IsModuleNameBusy("llm")) return RM_ERR;
    RedisModule_SetModuleAttribs(ctx, "llm", 1, RM_APIVER_1);
    /* A truncated or damaged RDB payload (RESTORE, a replica's sync) is an
     * error for the loader to report, not a reason for Redis to panic. */
    RedisModule_SetModuleOptions(ctx, RM_OPTIONS_HANDLE_IO_ERRORS);
    shim_log_ctx = RedisModule_GetDetachedThreadSafeContext(ctx);
    main_thread = pthread_self();

    Dl_info self;
    if (!dladdr((void *)RedisModule_OnLoad, &self) || !self.dli_fname) return RM_ERR;
    char *package_dir = strdup(self.dli_fname);
    int ok = promote_libpython(ctx) == RM_OK && start_python(ctx, dirname(package_dir)) == RM_OK;
    if (ok) {
        ok = shim_register(ctx, self.dli_fname, argv, argc) == RM_OK;
        if (PyErr_Occurred()) shim_log_python_error("cannot load the LLM module");
    }
    free(package_dir);
    if (!ok) return RM_ERR;
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    /* Commands take the GIL when they need it; between them nobody holds it
     * on Redis' main thread. */
    PyEval_SaveThread();
    return RM_OK;
}
