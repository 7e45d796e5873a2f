local saga = require "saga"
saga.define(