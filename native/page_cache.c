// medic's one native helper: posix_fadvise(POSIX_FADV_DONTNEED), which Node's fs does not offer.
// A deployment writes the whole image once; dropping the pages it has written back keeps it from
// filling the page cache (nbdcopy does the same for its destination). The call runs on libuv's
// thread pool: invalidating a few thousand pages is not free.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  off_t offset;
  off_t length;
  int error;
} DropRequest;

static void Execute(napi_env env, void* data) {
  (void)env;
  DropRequest* request = data;
  request->error = posix_fadvise(request->fd, request->offset, request->length, POSIX_FADV_DONTNEED);
}

static void Complete(napi_env env, napi_status status, void* data) {
  DropRequest* request = data;
  if (status == napi_ok && request->error == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, request->deferred, undefined);
  } else {
    napi_value message;
    napi_value error;
    const char* text = status == napi_ok ? strerror(request->error) : "cancelled";
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, request->deferred, error);
  }
  napi_delete_async_work(env, request->work);
  free(request);
}

// dropPages(fd, offset, length): Promise<void>; length 0 means to the end of the file.
static napi_value DropPages(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd = -1;
  double offset = -1;
  double length = -1;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_double(env, argv[1], &offset) != napi_ok ||
      napi_get_value_double(env, argv[2], &length) != napi_ok || fd < 0 || offset < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "dropPages(fd, offset, length) takes three non-negative numbers");
    return NULL;
  }
  DropRequest* request = calloc(1, sizeof *request);
  if (request == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  request->fd = fd;
  request->offset = (off_t)offset;
  request->length = (off_t)length;
  napi_value promise;
  napi_value name;
  napi_create_promise(env, &request->deferred, &promise);
  napi_create_string_utf8(env, "medic.dropPages", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, Execute, Complete, request, &request->work);
  napi_queue_async_work(env, request->work);
  return promise;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "dropPages", NAPI_AUTO_LENGTH, DropPages, NULL, &fn);
  napi_set_named_property(env, exports, "dropPages", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
