/* The crossing between Redis and redis_llm.bridge: one trampoline for every
 * command, one for each type callback, and the _redis_llm_shim module through
 * which Python reads keys, replicates and logs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static PyObject *foreign_value; /* what key_get returns for a key of another type */
static PyObject *load_spec;     /* keeps the command table's strings alive */

/* ---- replies: a Python value becomes a RESP reply ------------------------ */

static void reply(RedisModuleCtx *ctx, PyObject *value) {
    if (value == Py_None) {
        RedisModule_ReplyWithNull(ctx);
    } else if (PyBytes_Check(value)) {
        RedisModule_ReplyWithStringBuffer(ctx, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    } else if (PyLong_Check(value)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow) {
            RedisModule_ReplyWithLongLong(ctx, n);
        } else { /* ids above 2^63 do not fit an integer reply */
            PyObject *text = PyObject_Str(value);
            Py_ssize_t len;
            const char *s = text ? PyUnicode_AsUTF8AndSize(text, &len) : NULL;
            if (s) RedisModule_ReplyWithStringBuffer(ctx, s, len);
            else RedisModule_ReplyWithError(ctx, "ERR cannot format integer reply");
            Py_XDECREF(text);
        }
    } else if (PyFloat_Check(value)) {
        RedisModule_ReplyWithDouble(ctx, PyFloat_AS_DOUBLE(value));
    } else if (PyUnicode_Check(value)) {
        const char *s = PyUnicode_AsUTF8(value);
        RedisModule_ReplyWithSimpleString(ctx, s ? s : "");
    } else if (PyList_Check(value) || PyTuple_Check(value)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        RedisModule_ReplyWithArray(ctx, n);
        for (Py_ssize_t i = 0; i < n; i++) reply(ctx, items[i]);
    } else if (PyExceptionInstance_Check(value)) {
        PyObject *text = PyObject_Str(value);
        const char *s = text ? PyUnicode_AsUTF8(text) : NULL;
        RedisModule_ReplyWithError(ctx, s ? s : "ERR unknown error");
        Py_XDECREF(text);
    } else {
        RedisModule_ReplyWithError(ctx, "ERR internal error: unsupported reply type");
    }
    PyErr_Clear();
}

/* Send what Python returned; NULL (a Python exception escaped the bridge's
 * own handling) is logged and answered with a generic error. */
static void send_result(RedisModuleCtx *ctx, PyObject *result, const char *where) {
    if (result) {
        if (result != Py_Ellipsis) reply(ctx, result); /* Ellipsis: a worker will reply */
        Py_DECREF(result);
    } else {
        shim_log_python_error(where);
        RedisModule_ReplyWithError(ctx, "ERR internal error, see the server log");
    }
}

/* ---- the command trampoline -------------------------------------------- */

static int run_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    PyGILState_STATE gil = gil_lock();
    PyObject *args[2] = {PyLong_FromVoidPtr(ctx), PyTuple_New(argc)};
    for (int i = 0; args[1] && i < argc; i++) {
        size_t len;
        const char *s = RedisModule_StringPtrLen(argv[i], &len);
        PyTuple_SET_ITEM(args[1], i, PyBytes_FromStringAndSize(s, len));
    }
    static PyObject *dispatch, *key_positions;
    if (!dispatch) dispatch = PyObject_GetAttrString(shim_bridge, "dispatch");
    if (!key_positions) key_positions = PyObject_GetAttrString(shim_bridge, "key_positions");
    /* Cluster routing in Redis 7.0 finds a module command's keys through
     * this request (getkeys-api), not its key-specs: report every key. */
    int keys_request = RedisModule_IsKeysPositionRequest(ctx) != 0; /* then only argv */
    PyObject *fn = keys_request ? key_positions : dispatch;
    PyObject *result = fn && args[0] && args[1] && !PyErr_Occurred()
                           ? PyObject_Vectorcall(fn, args + keys_request, 2 - keys_request, NULL)
                           : NULL;
    if (keys_request) {
        for (Py_ssize_t i = 0; result && i < PyList_Size(result); i++)
            RedisModule_KeyAtPos(ctx, PyLong_AsLong(PyList_GET_ITEM(result, i)));
        if (!result) shim_log_python_error("key positions");
        Py_XDECREF(result);
    } else {
        send_result(ctx, result, "command failed");
    }
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    gil_unlock(gil);
    return RM_OK;
}

/* ---- type callbacks: a value is a Python object owned by its key ----------- */

static PyObject *call_value(void *value, const char *method, PyObject *arg) {
    PyObject *name = PyUnicode_InternFromString(method);
    PyObject *result = arg ? PyObject_CallMethodOneArg(value, name, arg)
                           : PyObject_CallMethodNoArgs(value, name);
    Py_XDECREF(name);
    if (!result) shim_log_python_error(method);
    return result;
}

static void type_rdb_save(RedisModuleIO *rdb, void *value) {
    PyGILState_STATE gil = gil_lock();
    PyObject *chunks = call_value(value, "dump", NULL);
    PyObject *seq = chunks ? PySequence_Fast(chunks, "dump() must return a sequence") : NULL;
    Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    RedisModule_SaveUnsigned(rdb, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) == 0) {
            RedisModule_SaveStringBuffer(rdb, view.buf, view.len);
            PyBuffer_Release(&view);
        } else {
            shim_log_python_error("dump chunk");
            RedisModule_SaveStringBuffer(rdb, "", 0);
        }
    }
    Py_XDECREF(seq);
    Py_XDECREF(chunks);
    gil_unlock(gil);
}

/* Chunks reach Python as memoryviews over Redis' own buffers: a vector store
 * is mostly a few big arrays, and copying them again costs as much as the
 * load itself. A buffer is freed only once its view is released, which
 * fails (and the buffer is kept) if the loader still holds it. */
static void release_chunks(PyObject *chunks) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(chunks); i++) {
        PyObject *view = PyList_GET_ITEM(chunks, i);
        void *buf = PyMemoryView_GET_BUFFER(view)->buf;
        PyObject *done = PyObject_CallMethod(view, "release", NULL);
        if (done) RedisModule_Free(buf);
        else shim_log_python_error("an RDB chunk is still referenced, keeping it");
        Py_XDECREF(done);
    }
}

static void *type_rdb_load(RedisModuleIO *rdb, int encver) {
    uint64_t n = RedisModule_LoadUnsigned(rdb);
    if (RedisModule_IsIOError(rdb)) return NULL;
    PyGILState_STATE gil = gil_lock();
    PyObject *chunks = PyList_New(0);
    int ok = chunks != NULL;
    for (uint64_t i = 0; ok && i < n; i++) {
        size_t len;
        char *buf = RedisModule_LoadStringBuffer(rdb, &len);
        ok = buf && !RedisModule_IsIOError(rdb);
        PyObject *view = ok ? PyMemoryView_FromMemory(buf, len, PyBUF_READ) : NULL;
        if (view && PyList_Append(chunks, view) == 0) {
            Py_DECREF(view);
            continue;
        }
        Py_XDECREF(view);
        if (buf) RedisModule_Free(buf);
        ok = 0;
    }
    PyObject *value = ok ? PyObject_CallMethod(shim_bridge, "restore", "iO", encver, chunks) : NULL;
    if (!value && ok) shim_log_python_error("cannot load a value from RDB");
    PyErr_Clear(); /* drops a traceback that may still reference the chunks */
    if (chunks) release_chunks(chunks);
    Py_XDECREF(chunks);
    gil_unlock(gil);
    return value;
}

static RedisModuleString **make_strings(PyObject *seq, Py_ssize_t *count) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    RedisModuleString **strings = calloc(n ? n : 1, sizeof *strings);
    for (Py_ssize_t i = 0; strings && i < n; i++) {
        char *buf;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq, i), &buf, &len) < 0) {
            *count = i;
            return strings;
        }
        strings[i] = RedisModule_CreateString(NULL, buf, len);
    }
    *count = n;
    return strings;
}

static void free_strings(RedisModuleString **strings, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) RedisModule_FreeString(NULL, strings[i]);
    free(strings);
}

static void type_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
    PyGILState_STATE gil = gil_lock();
    size_t len;
    const char *name = RedisModule_StringPtrLen(key, &len);
    PyObject *keyname = PyBytes_FromStringAndSize(name, len);
    PyObject *commands = keyname ? call_value(value, "aof_commands", keyname) : NULL;
    PyObject *iter = commands ? PyObject_GetIter(commands) : NULL;
    PyObject *command;
    while (iter && (command = PyIter_Next(iter))) {
        PyObject *seq = PySequence_Fast(command, "an AOF command is a sequence of bytes");
        Py_ssize_t count = 0;
        RedisModuleString **strings = seq ? make_strings(seq, &count) : NULL;
        if (strings && count == PySequence_Fast_GET_SIZE(seq) && count > 0) {
            const char *cmd = PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(seq, 0));
            RedisModule_EmitAOF(aof, cmd, "v", strings + 1, (size_t)(count - 1));
        } else {
            shim_log_python_error("malformed AOF command");
        }
        if (strings) free_strings(strings, count);
        Py_XDECREF(seq);
        Py_DECREF(command);
    }
    if (PyErr_Occurred()) shim_log_python_error("aof_commands");
    Py_XDECREF(iter);
    Py_XDECREF(commands);
    Py_XDECREF(keyname);
    gil_unlock(gil);
}

static size_t type_mem_usage(const void *value) {
    PyGILState_STATE gil = gil_lock();
    PyObject *size = call_value((void *)value, "memory_usage", NULL);
    size_t n = size ? PyLong_AsSize_t(size) : 0;
    if (PyErr_Occurred()) shim_log_python_error("memory_usage");
    Py_XDECREF(size);
    gil_unlock(gil);
    return n;
}

static void type_digest(RedisModuleDigest *md, void *value) {
    PyGILState_STATE gil = gil_lock();
    PyObject *chunks = call_value(value, "digest", NULL);
    PyObject *seq = chunks ? PySequence_Fast(chunks, "digest() must return a sequence") : NULL;
    for (Py_ssize_t i = 0; seq && i < PySequence_Fast_GET_SIZE(seq); i++) {
        char *buf;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq, i), &buf, &len) == 0)
            RedisModule_DigestAddStringBuffer(md, buf, len);
    }
    RedisModule_DigestEndSequence(md);
    if (PyErr_Occurred()) shim_log_python_error("digest");
    Py_XDECREF(seq);
    Py_XDECREF(chunks);
    gil_unlock(gil);
}

/* May run on Redis' lazy-free thread. */
static void type_free(void *value) {
    PyGILState_STATE gil = gil_lock();
    Py_DECREF((PyObject *)value);
    gil_unlock(gil);
}

/* ---- the _redis_llm_shim module ---------------------------------------- */

static RedisModuleCtx *ctx_arg(PyObject *o) { return PyLong_AsVoidPtr(o); }

static RedisModuleString *string_arg(PyObject *o) {
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(o, &buf, &len) < 0) return NULL;
    return RedisModule_CreateString(NULL, buf, len);
}

/* key_get(ctx, key) -> the module value, None when the key is missing, or
 * FOREIGN when it holds a value of another type. */
static PyObject *py_key_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "key_get(ctx, key)");
    RedisModuleCtx *ctx = ctx_arg(args[0]);
    RedisModuleString *name = string_arg(args[1]);
    if (!name) return NULL;
    RedisModuleKey *key = RedisModule_OpenKey(ctx, name, RM_READ);
    PyObject *result = foreign_value;
    int type = RedisModule_KeyType(key);
    if (type == RM_KEYTYPE_EMPTY) {
        result = Py_None;
    } else if (type == RM_KEYTYPE_MODULE) {
        RedisModuleType *mt = RedisModule_ModuleTypeGetType(key);
        for (int i = 0; i < shim_ntypes; i++)
            if (mt == shim_types[i]) result = RedisModule_ModuleTypeGetValue(key);
    }
    RedisModule_CloseKey(key);
    RedisModule_FreeString(NULL, name);
    Py_INCREF(result);
    return result;
}

static void scan_key(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleKey *key, void *found) {
    if (!key || RedisModule_KeyType(key) != RM_KEYTYPE_MODULE) return;
    RedisModuleType *mt = RedisModule_ModuleTypeGetType(key);
    for (int i = 0; i < shim_ntypes; i++) {
        if (mt != shim_types[i]) continue;
        size_t len;
        const char *s = RedisModule_StringPtrLen(name, &len);
        PyObject *item = Py_BuildValue("(y#O)", s, (Py_ssize_t)len, RedisModule_ModuleTypeGetValue(key));
        if (!item || PyList_Append(found, item) < 0) PyErr_Clear();
        Py_XDECREF(item);
    }
}

/* scan(ctx) -> [(key, value)] for every key of the module's types in the
 * selected database: a full pass, like KEYS. */
static PyObject *py_scan(PyObject *self, PyObject *ctx) {
    PyObject *found = PyList_New(0);
    RedisModuleScanCursor *cursor = RedisModule_ScanCursorCreate();
    while (found && RedisModule_Scan(ctx_arg(ctx), cursor, scan_key, found)) continue;
    RedisModule_ScanCursorDestroy(cursor);
    return found;
}

/* key_set(ctx, key, type_index, value): the key now holds value. */
static PyObject *py_key_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "key_set(ctx, key, type, value)");
    RedisModuleCtx *ctx = ctx_arg(args[0]);
    long type = PyLong_AsLong(args[2]);
    if (type < 0 || type >= shim_ntypes) return PyErr_Format(PyExc_ValueError, "bad type index");
    RedisModuleString *name = string_arg(args[1]);
    if (!name) return NULL;
    RedisModuleKey *key = RedisModule_OpenKey(ctx, name, RM_READ | RM_WRITE);
    Py_INCREF(args[3]);
    if (RedisModule_ModuleTypeSetValue(key, shim_types[type], args[3]) != RM_OK) Py_DECREF(args[3]);
    RedisModule_CloseKey(key);
    RedisModule_FreeString(NULL, name);
    Py_RETURN_NONE;
}

/* notify(ctx, event, key): WATCH, client tracking and keyspace events learn
 * that key changed. */
static PyObject *py_notify(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "notify(ctx, event, key)");
    RedisModuleCtx *ctx = ctx_arg(args[0]);
    const char *event = PyBytes_AsString(args[1]);
    RedisModuleString *name = event ? string_arg(args[2]) : NULL;
    if (!name) return NULL;
    RedisModule_SignalModifiedKey(ctx, name);
    RedisModule_NotifyKeyspaceEvent(ctx, RM_NOTIFY_MODULE, event, name);
    RedisModule_FreeString(NULL, name);
    Py_RETURN_NONE;
}

/* replicate(ctx, command, args): propagate a command to replicas and AOF. */
static PyObject *py_replicate(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "replicate(ctx, command, args)");
    const char *cmd = PyBytes_AsString(args[1]);
    PyObject *seq = cmd ? PySequence_Fast(args[2], "args must be a sequence") : NULL;
    if (!seq) return NULL;
    Py_ssize_t count;
    RedisModuleString **strings = make_strings(seq, &count);
    int ok = strings && count == PySequence_Fast_GET_SIZE(seq) &&
             RedisModule_Replicate(ctx_arg(args[0]), cmd, "v", strings, (size_t)count) == RM_OK;
    if (strings) free_strings(strings, count);
    Py_DECREF(seq);
    if (!ok && !PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "replicate failed");
    return ok ? Py_NewRef(Py_None) : NULL;
}

static PyObject *py_replicate_verbatim(PyObject *self, PyObject *ctx) {
    RedisModule_ReplicateVerbatim(ctx_arg(ctx));
    Py_RETURN_NONE;
}

/* ---- blocked clients: slow work runs on Python worker threads ----------- */

/* On Redis' main thread: send the reply the worker computed. */
static int blocked_reply(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    PyGILState_STATE gil = gil_lock();
    PyObject *result = RedisModule_GetBlockedClientPrivateData(ctx);
    send_result(ctx, Py_NewRef(result), "a blocked command failed");
    gil_unlock(gil);
    return RM_OK;
}

/* Runs once per blocked client (after its reply, or once it disconnected). */
static void blocked_free(RedisModuleCtx *ctx, void *result) {
    if (!result) return;
    PyGILState_STATE gil = gil_lock();
    Py_DECREF((PyObject *)result);
    gil_unlock(gil);
}

/* block(ctx) -> handle: the client waits for unblock(handle). No Redis
 * timeout: redis_llm.pool keeps the deadlines (see there why). */
static PyObject *py_block(PyObject *self, PyObject *ctx) {
    RedisModuleBlockedClient *bc =
        RedisModule_BlockClient(ctx_arg(ctx), blocked_reply, NULL, blocked_free, 0);
    if (!bc) return PyErr_Format(PyExc_RuntimeError, "cannot block this client");
    RedisModule_BlockedClientMeasureTimeStart(bc);
    return PyLong_FromVoidPtr(bc);
}

/* locked(handle, db, fn) -> fn(ctx), from a worker thread: fn runs under
 * Redis' lock with a context on the blocked client's database (handle 0: no
 * client, database db). It works after the client timed out or left, so a
 * worker's writes always land. The GIL is released while waiting for Redis'
 * lock: the main thread takes them in the other order. */
static PyObject *py_locked(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "locked(handle, db, fn)");
    RedisModuleBlockedClient *bc = PyLong_AsVoidPtr(args[0]);
    int db = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    RedisModuleCtx *ctx;
    Py_BEGIN_ALLOW_THREADS
    ctx = RedisModule_GetThreadSafeContext(bc);
    RedisModule_ThreadSafeContextLock(ctx);
    if (!bc) RedisModule_SelectDb(ctx, db);
    Py_END_ALLOW_THREADS
    PyObject *ctx_int = PyLong_FromVoidPtr(ctx);
    PyObject *result = ctx_int ? PyObject_CallOneArg(args[2], ctx_int) : NULL;
    Py_XDECREF(ctx_int);
    RedisModule_FreeThreadSafeContext(ctx);
    RedisModule_ThreadSafeContextUnlock(ctx);
    return result;
}

/* unblock(handle, reply): from any thread, exactly once per handle. */
static PyObject *py_unblock(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "unblock(handle, reply)");
    RedisModuleBlockedClient *bc = PyLong_AsVoidPtr(args[0]);
    if (!bc) return NULL;
    Py_INCREF(args[1]);
    RedisModule_BlockedClientMeasureTimeEnd(bc);
    RedisModule_UnblockClient(bc, args[1]);
    Py_RETURN_NONE;
}

/* db(ctx) -> the selected database; user(ctx) -> the calling ACL user's name. */
static PyObject *py_db(PyObject *self, PyObject *ctx) {
    return PyLong_FromLong(RedisModule_GetSelectedDb(ctx_arg(ctx)));
}

/* acl_check(user, key, flags): may the ACL user use key as the key-spec
 * flags say (read: ACCESS; write: INSERT/UPDATE/DELETE)? Redis checks the
 * keys a command names; this checks the keys a stored value names. */
static PyObject *py_acl_check(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "acl_check(user, key, flags)");
    int flags = PyLong_AsLong(args[2]);
    RedisModuleString *name = PyErr_Occurred() ? NULL : string_arg(args[0]);
    RedisModuleString *key = name ? string_arg(args[1]) : NULL;
    if (!key) {
        if (name) RedisModule_FreeString(NULL, name);
        return NULL;
    }
    RedisModuleUser *user = RedisModule_GetModuleUserFromUserName(name);
    int allowed = user && RedisModule_ACLCheckKeyPermissions(user, key, flags) == RM_OK;
    if (user) RedisModule_FreeModuleUser(user);
    RedisModule_FreeString(NULL, key);
    RedisModule_FreeString(NULL, name);
    return PyBool_FromLong(allowed);
}

static PyObject *py_user(PyObject *self, PyObject *ctx) {
    RedisModuleString *name = RedisModule_GetCurrentUserName(ctx_arg(ctx));
    if (!name) Py_RETURN_NONE;
    size_t len;
    const char *ptr = RedisModule_StringPtrLen(name, &len);
    PyObject *out = PyBytes_FromStringAndSize(ptr, (Py_ssize_t)len);
    RedisModule_FreeString(NULL, name);
    return out;
}

/* redact(ctx, pos): hide argument pos (a secret) from SLOWLOG, MONITOR and the log. */
static PyObject *py_redact(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "redact(ctx, pos)");
    int pos = PyLong_AsLong(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    RedisModule_RedactClientCommandArgument(ctx_arg(args[0]), pos);
    Py_RETURN_NONE;
}

static PyObject *py_context_flags(PyObject *self, PyObject *ctx) {
    return PyLong_FromLong(RedisModule_GetContextFlags(ctx_arg(ctx)));
}

/* log(level, message) to the Redis log; callable from any thread. */
static PyObject *py_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "log(level, message)");
    const char *level = PyUnicode_AsUTF8(args[0]);
    const char *message = level ? PyUnicode_AsUTF8(args[1]) : NULL;
    if (!message) return NULL;
    RedisModule_Log(shim_log_ctx, level, "%s", message);
    Py_RETURN_NONE;
}

static PyMethodDef shim_methods[] = {
    {"key_get", (PyCFunction)(void (*)(void))py_key_get, METH_FASTCALL, NULL},
    {"key_set", (PyCFunction)(void (*)(void))py_key_set, METH_FASTCALL, NULL},
    {"notify", (PyCFunction)(void (*)(void))py_notify, METH_FASTCALL, NULL},
    {"replicate", (PyCFunction)(void (*)(void))py_replicate, METH_FASTCALL, NULL},
    {"replicate_verbatim", py_replicate_verbatim, METH_O, NULL},
    {"context_flags", py_context_flags, METH_O, NULL},
    {"block", py_block, METH_O, NULL},
    {"unblock", (PyCFunction)(void (*)(void))py_unblock, METH_FASTCALL, NULL},
    {"locked", (PyCFunction)(void (*)(void))py_locked, METH_FASTCALL, NULL},
    {"redact", (PyCFunction)(void (*)(void))py_redact, METH_FASTCALL, NULL},
    {"db", py_db, METH_O, NULL},
    {"user", py_user, METH_O, NULL},
    {"acl_check", (PyCFunction)(void (*)(void))py_acl_check, METH_FASTCALL, NULL},
    {"scan", py_scan, METH_O, NULL},
    {"log", (PyCFunction)(void (*)(void))py_log, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef shim_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_redis_llm_shim", .m_size = -1, .m_methods = shim_methods};

PyObject *shim_init_python_module(void) {
    PyObject *module = PyModule_Create(&shim_module);
    foreign_value = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (module && foreign_value) PyModule_AddObjectRef(module, "FOREIGN", foreign_value);
    return module;
}

/* ---- registration: the types and the command table come from Python ----- */

static int register_types(RedisModuleCtx *ctx, PyObject *types) {
    static RMTypeMethods methods = {
        .version = RM_TYPE_METHOD_VERSION,
        .rdb_load = type_rdb_load,
        .rdb_save = type_rdb_save,
        .aof_rewrite = type_aof_rewrite,
        .mem_usage = type_mem_usage,
        .digest = type_digest,
        .free = type_free,
    };
    for (Py_ssize_t i = 0; i < PyList_Size(types) && i < SHIM_MAX_TYPES; i++) {
        const char *name;
        int encver;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(types, i), "si", &name, &encver)) return RM_ERR;
        shim_types[i] = RedisModule_CreateDataType(ctx, name, encver, &methods);
        if (!shim_types[i]) {
            RedisModule_Log(ctx, "warning", "cannot create data type %s", name);
            return RM_ERR;
        }
        shim_ntypes = i + 1;
    }
    return RM_OK;
}

/* Each command comes with the address of the RedisModuleCommandInfo that
 * redis_llm.command_info built (ctypes); Redis copies it. */
static int register_commands(RedisModuleCtx *ctx, PyObject *commands) {
    for (Py_ssize_t i = 0; i < PyList_Size(commands); i++) {
        const char *name, *flags;
        PyObject *info;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(commands, i), "ssO!", &name, &flags, &PyLong_Type,
                              &info))
            return RM_ERR;
        if (RedisModule_CreateCommand(ctx, name, run_command, flags, 0, 0, 0) != RM_OK ||
            RedisModule_SetCommandInfo(RedisModule_GetCommand(ctx, name),
                                       PyLong_AsVoidPtr(info)) != RM_OK) {
            RedisModule_Log(ctx, "warning", "cannot register command %s", name);
            return RM_ERR;
        }
    }
    return RM_OK;
}

/* ---- INFO and CONFIG: Redis asks, redis_llm.bridge answers -------------- */

/* The llm section of INFO: bridge.info() gives ((field, value), ...). */
static void info_func(RedisModuleInfoCtx *info, int for_crash_report) {
    if (for_crash_report) return; /* a crashing server must not wait for the GIL */
    PyGILState_STATE gil = gil_lock();
    PyObject *fields = PyObject_CallMethod(shim_bridge, "info", NULL);
    RedisModule_InfoAddSection(info, ""); /* "" is the module's own: # llm */
    for (Py_ssize_t i = 0; fields && i < PyTuple_Size(fields); i++) {
        const char *field;
        PyObject *value;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "sO", &field, &value)) break;
        if (PyLong_Check(value))
            RedisModule_InfoAddFieldLongLong(info, field, PyLong_AsLongLong(value));
        else if (PyUnicode_Check(value))
            RedisModule_InfoAddFieldCString(info, field, PyUnicode_AsUTF8(value));
    }
    if (PyErr_Occurred()) shim_log_python_error("INFO");
    Py_XDECREF(fields);
    gil_unlock(gil);
}

static long long config_get(const char *name, void *privdata) {
    PyGILState_STATE gil = gil_lock();
    PyObject *value = PyObject_CallMethod(shim_bridge, "config_get", "s", name);
    long long n = value ? PyLong_AsLongLong(value) : -1;
    if (PyErr_Occurred()) shim_log_python_error("CONFIG GET");
    Py_XDECREF(value);
    gil_unlock(gil);
    return n;
}

/* bridge.config_set returns None, or why the value is refused. */
static int config_set(const char *name, long long value, void *privdata, RedisModuleString **err) {
    PyGILState_STATE gil = gil_lock();
    PyObject *refused = PyObject_CallMethod(shim_bridge, "config_set", "sL", name, value);
    const char *why = !refused ? "internal error, see the server log"
                      : refused == Py_None ? NULL : PyUnicode_AsUTF8(refused);
    if (PyErr_Occurred()) shim_log_python_error("CONFIG SET");
    if (why) *err = RedisModule_CreateString(NULL, why, strlen(why));
    Py_XDECREF(refused);
    gil_unlock(gil);
    return why ? RM_ERR : RM_OK;
}

static int register_configs(RedisModuleCtx *ctx, PyObject *configs) {
    for (Py_ssize_t i = 0; i < PyList_Size(configs); i++) {
        const char *name;
        long long dflt, min, max;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(configs, i), "sLLL", &name, &dflt, &min, &max) ||
            RedisModule_RegisterNumericConfig(ctx, name, dflt, 0, min, max, config_get, config_set,
                                              NULL, NULL) != RM_OK)
            return RM_ERR;
    }
    return RedisModule_LoadConfigs(ctx) == RM_OK && RedisModule_RegisterInfoFunc(ctx, info_func) == RM_OK
               ? RM_OK : RM_ERR;
}

int shim_register(RedisModuleCtx *ctx, const char *module_path, RedisModuleString **argv,
                  int argc) {
    PyObject *args = PyList_New(argc);
    for (int i = 0; args && i < argc; i++) {
        size_t len;
        const char *s = RedisModule_StringPtrLen(argv[i], &len);
        PyList_SET_ITEM(args, i, PyBytes_FromStringAndSize(s, len));
    }
    load_spec = args ? PyObject_CallMethod(shim_bridge, "load", "sO", module_path, args) : NULL;
    Py_XDECREF(args);
    if (!load_spec) return RM_ERR;
    PyObject *types = PyObject_GetAttrString(load_spec, "types");
    PyObject *commands = PyObject_GetAttrString(load_spec, "commands");
    PyObject *configs = PyObject_GetAttrString(load_spec, "configs");
    int ok = types && commands && configs && PyList_Check(types) && PyList_Check(commands) &&
             PyList_Check(configs) && register_types(ctx, types) == RM_OK &&
             register_commands(ctx, commands) == RM_OK && register_configs(ctx, configs) == RM_OK;
    Py_XDECREF(types);
    Py_XDECREF(commands);
    Py_XDECREF(configs);
    return ok ? RM_OK : RM_ERR;
}
