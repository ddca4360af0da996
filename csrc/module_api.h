/* The subset of the Redis module API (7.0) that the shim uses, declared from
 * the public API reference. Redis hands a module its API as named function
 * pointers, fetched through the getter stored at the start of the load
 * context; MODULE_API lists every one the shim fetches. */
#ifndef REDIS_LLM_MODULE_API_H
#define REDIS_LLM_MODULE_API_H

#include <stddef.h>
#include <stdint.h>

#define RM_OK 0
#define RM_ERR 1
#define RM_APIVER_1 1
#define RM_READ (1 << 0)
#define RM_WRITE (1 << 1)
#define RM_KEYTYPE_EMPTY 0
#define RM_KEYTYPE_MODULE 6
#define RM_TYPE_METHOD_VERSION 1
#define RM_NOTIFY_MODULE (1 << 13)
#define RM_OPTIONS_HANDLE_IO_ERRORS (1 << 0)

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleKey RedisModuleKey;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleIO RedisModuleIO;
typedef struct RedisModuleType RedisModuleType;
typedef struct RedisModuleDigest RedisModuleDigest;
typedef struct RedisModuleCommand RedisModuleCommand;
typedef struct RedisModuleBlockedClient RedisModuleBlockedClient;
typedef struct RedisModuleUser RedisModuleUser;
typedef struct RedisModuleInfoCtx RedisModuleInfoCtx;
typedef struct RedisModuleScanCursor RedisModuleScanCursor;

typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *, RedisModuleString **, int);
typedef void (*RedisModuleFreePrivDataFunc)(RedisModuleCtx *, void *privdata);
typedef void (*RedisModuleInfoFunc)(RedisModuleInfoCtx *, int for_crash_report);
typedef void (*RedisModuleScanCB)(RedisModuleCtx *, RedisModuleString *name, RedisModuleKey *,
                                  void *privdata);
typedef long long (*RedisModuleConfigGetNumericFunc)(const char *name, void *privdata);
typedef int (*RedisModuleConfigSetNumericFunc)(const char *name, long long value, void *privdata,
                                               RedisModuleString **err);
typedef int (*RedisModuleConfigApplyFunc)(RedisModuleCtx *, void *privdata, RedisModuleString **err);

typedef struct {
    uint64_t version;
    void *(*rdb_load)(RedisModuleIO *, int encver);
    void (*rdb_save)(RedisModuleIO *, void *value);
    void (*aof_rewrite)(RedisModuleIO *, RedisModuleString *key, void *value);
    size_t (*mem_usage)(const void *value);
    void (*digest)(RedisModuleDigest *, void *value);
    void (*free)(void *value);
} RMTypeMethods;

/* RedisModuleCommandInfo: built in Python (redis_llm/command_info.py). */
typedef struct RMCommandInfo RMCommandInfo;

#define MODULE_API(X)                                                                              \
    X(void, Log, (RedisModuleCtx *, const char *level, const char *fmt, ...))                      \
    X(void, SetModuleAttribs, (RedisModuleCtx *, const char *name, int ver, int apiver))           \
    X(int, IsModuleNameBusy, (const char *name))                                                   \
    X(RedisModuleCtx *, GetDetachedThreadSafeContext, (RedisModuleCtx *))                          \
    X(int, CreateCommand,                                                                          \
      (RedisModuleCtx *, const char *name, RedisModuleCmdFunc, const char *flags, int first,       \
       int last, int step))                                                                        \
    X(RedisModuleCommand *, GetCommand, (RedisModuleCtx *, const char *name))                      \
    X(int, SetCommandInfo, (RedisModuleCommand *, const RMCommandInfo *))                          \
    X(RedisModuleType *, CreateDataType,                                                           \
      (RedisModuleCtx *, const char *name, int encver, RMTypeMethods *))                           \
    X(int, ModuleTypeSetValue, (RedisModuleKey *, RedisModuleType *, void *value))                 \
    X(RedisModuleType *, ModuleTypeGetType, (RedisModuleKey *))                                    \
    X(void *, ModuleTypeGetValue, (RedisModuleKey *))                                              \
    X(void *, OpenKey, (RedisModuleCtx *, RedisModuleString *name, int mode))                      \
    X(void, CloseKey, (RedisModuleKey *))                                                          \
    X(int, KeyType, (RedisModuleKey *))                                                            \
    X(RedisModuleString *, CreateString, (RedisModuleCtx *, const char *ptr, size_t len))          \
    X(void, FreeString, (RedisModuleCtx *, RedisModuleString *))                                   \
    X(const char *, StringPtrLen, (const RedisModuleString *, size_t *len))                        \
    X(int, ReplyWithLongLong, (RedisModuleCtx *, long long))                                       \
    X(int, ReplyWithDouble, (RedisModuleCtx *, double))                                            \
    X(int, ReplyWithStringBuffer, (RedisModuleCtx *, const char *buf, size_t len))                 \
    X(int, ReplyWithSimpleString, (RedisModuleCtx *, const char *msg))                             \
    X(int, ReplyWithError, (RedisModuleCtx *, const char *err))                                    \
    X(int, ReplyWithNull, (RedisModuleCtx *))                                                      \
    X(int, ReplyWithArray, (RedisModuleCtx *, long len))                                           \
    X(int, Replicate, (RedisModuleCtx *, const char *cmd, const char *fmt, ...))                   \
    X(int, ReplicateVerbatim, (RedisModuleCtx *))                                                  \
    X(int, RedactClientCommandArgument, (RedisModuleCtx *, int pos))                               \
    X(int, SelectDb, (RedisModuleCtx *, int db))                                                   \
    X(int, GetSelectedDb, (RedisModuleCtx *))                                                      \
    X(RedisModuleString *, GetCurrentUserName, (RedisModuleCtx *))                                 \
    X(int, GetContextFlags, (RedisModuleCtx *))                                                    \
    X(int, SignalModifiedKey, (RedisModuleCtx *, RedisModuleString *key))                          \
    X(int, NotifyKeyspaceEvent,                                                                    \
      (RedisModuleCtx *, int type, const char *event, RedisModuleString *key))                     \
    X(void, SetModuleOptions, (RedisModuleCtx *, int options))                                     \
    X(int, IsIOError, (RedisModuleIO *))                                                           \
    X(void, SaveUnsigned, (RedisModuleIO *, uint64_t))                                             \
    X(uint64_t, LoadUnsigned, (RedisModuleIO *))                                                   \
    X(void, SaveStringBuffer, (RedisModuleIO *, const char *buf, size_t len))                      \
    X(char *, LoadStringBuffer, (RedisModuleIO *, size_t *len))                                    \
    X(void, EmitAOF, (RedisModuleIO *, const char *cmd, const char *fmt, ...))                     \
    X(void, DigestAddStringBuffer, (RedisModuleDigest *, const char *buf, size_t len))             \
    X(void, DigestEndSequence, (RedisModuleDigest *))                                              \
    X(RedisModuleBlockedClient *, BlockClient,                                                     \
      (RedisModuleCtx *, RedisModuleCmdFunc reply, RedisModuleCmdFunc timeout,                     \
       RedisModuleFreePrivDataFunc free_privdata, long long timeout_ms))                           \
    X(int, UnblockClient, (RedisModuleBlockedClient *, void *privdata))                            \
    X(void *, GetBlockedClientPrivateData, (RedisModuleCtx *))                                     \
    X(int, BlockedClientMeasureTimeStart, (RedisModuleBlockedClient *))                            \
    X(int, BlockedClientMeasureTimeEnd, (RedisModuleBlockedClient *))                              \
    X(RedisModuleCtx *, GetThreadSafeContext, (RedisModuleBlockedClient *))                        \
    X(void, FreeThreadSafeContext, (RedisModuleCtx *))                                             \
    X(void, ThreadSafeContextLock, (RedisModuleCtx *))                                             \
    X(void, ThreadSafeContextUnlock, (RedisModuleCtx *))                                           \
    X(RedisModuleUser *, GetModuleUserFromUserName, (RedisModuleString *name))                     \
    X(int, FreeModuleUser, (RedisModuleUser *))                                                    \
    X(int, ACLCheckKeyPermissions, (RedisModuleUser *, RedisModuleString *key, int flags))         \
    X(int, RegisterInfoFunc, (RedisModuleCtx *, RedisModuleInfoFunc))                              \
    X(int, InfoAddSection, (RedisModuleInfoCtx *, const char *name))                               \
    X(int, InfoAddFieldLongLong, (RedisModuleInfoCtx *, const char *field, long long value))       \
    X(int, InfoAddFieldCString, (RedisModuleInfoCtx *, const char *field, const char *value))      \
    X(int, RegisterNumericConfig,                                                                  \
      (RedisModuleCtx *, const char *name, long long dflt, unsigned int flags, long long min,      \
       long long max, RedisModuleConfigGetNumericFunc, RedisModuleConfigSetNumericFunc,            \
       RedisModuleConfigApplyFunc, void *privdata))                                                \
    X(int, LoadConfigs, (RedisModuleCtx *))                                                        \
    X(int, IsKeysPositionRequest, (RedisModuleCtx *))                                              \
    X(void, KeyAtPos, (RedisModuleCtx *, int pos))                                                 \
    X(RedisModuleScanCursor *, ScanCursorCreate, (void))                                           \
    X(void, ScanCursorDestroy, (RedisModuleScanCursor *))                                          \
    X(int, Scan, (RedisModuleCtx *, RedisModuleScanCursor *, RedisModuleScanCB, void *privdata))   \
    X(void, Free, (void *))

#define RM_DECLARE(ret, name, args) extern ret(*RedisModule_##name) args;
MODULE_API(RM_DECLARE)
#undef RM_DECLARE

#endif
